//! Which existing objects an app may write. The operator applies its children with
//! force, so without this check an AetherApp named after any ServiceAccount,
//! Service or Deployment of its namespace would adopt it: rewrite a Service's
//! selector, mount a privileged ServiceAccount, and have Kubernetes' garbage
//! collector delete it with the app. An app writes only what is missing or what
//! it owns (a controller ownerReference with its UID); anything else is a
//! `NameConflict` and nothing changes. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::validate::Invalid;

/// Whether `app_uid` owns `meta` as its controller.
pub fn owned_by(meta: &ObjectMeta, app_uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == app_uid)
}

/// May the app (`app_uid`, named `app`) write the object `kind/name`, which is
/// `existing` in the cluster now?
pub fn claim(
    kind: &str,
    name: &str,
    existing: Option<&ObjectMeta>,
    app: &str,
    app_uid: &str,
) -> Result<(), Invalid> {
    let Some(meta) = existing else { return Ok(()) };
    if owned_by(meta, app_uid) {
        return Ok(());
    }
    // An earlier app of the same name was deleted and the garbage collector has
    // not removed its children yet: wait, do not fight over them.
    let leftover = meta.deletion_timestamp.is_some()
        || meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.kind == "AetherApp" && o.name == app);
    Err(Invalid {
        reason: "NameConflict",
        message: if leftover {
            format!("{kind} {name} still belongs to a deleted AetherApp {app}; waiting for it to be removed")
        } else {
            format!(
                "{kind} {name} already exists and was not created for this AetherApp: it is left as it is; rename the app or remove the {kind}"
            )
        },
        waiting: leftover,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(owner: Option<(&str, &str, &str)>) -> ObjectMeta {
        ObjectMeta {
            name: Some("web".into()),
            owner_references: owner.map(|(kind, name, uid)| {
                vec![OwnerReference {
                    api_version: "aether.dev/v1alpha1".into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_app_writes_what_is_missing_or_its_own() {
        assert!(claim("Service", "web", None, "web", "u1").is_ok());
        assert!(
            claim(
                "Service",
                "web",
                Some(&meta(Some(("AetherApp", "web", "u1")))),
                "web",
                "u1"
            )
            .is_ok()
        );
    }

    #[test]
    fn anything_else_is_a_name_conflict_that_changes_nothing() {
        for existing in [
            meta(None),
            meta(Some(("Deployment", "other", "u9"))),
            // Another kind of owner that happens to have the same name.
            meta(Some(("HelmRelease", "web", "u9"))),
        ] {
            let refused = claim("ServiceAccount", "web", Some(&existing), "web", "u1").unwrap_err();
            assert_eq!(refused.reason, "NameConflict");
            assert!(!refused.waiting, "a standing conflict, not progress");
            assert!(
                refused.message.contains("ServiceAccount web"),
                "{}",
                refused.message
            );
        }
    }

    #[test]
    fn the_children_of_a_deleted_namesake_are_waited_for() {
        let refused = claim(
            "Deployment",
            "web",
            Some(&meta(Some(("AetherApp", "web", "old")))),
            "web",
            "u1",
        )
        .unwrap_err();
        assert!(refused.waiting);
    }
}
