//! Pods and Deployments for the tests, all in the Pod Security "restricted" shape the
//! operator will use: non-root, read-only root filesystem, no capabilities, seccomp.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, Pod, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::Settings;

const UID: i64 = 10001;

/// A container running `node -e script` as a restricted, non-root user.
pub fn node_container(settings: &Settings, name: &str, script: &str) -> Container {
    Container {
        name: name.into(),
        image: Some(settings.node_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(vec!["node".into(), "-e".into(), script.into()]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn pod_spec(container: Container, automount_token: bool, restart: &str) -> PodSpec {
    PodSpec {
        containers: vec![container],
        restart_policy: Some(restart.into()),
        automount_service_account_token: Some(automount_token),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(UID),
            run_as_group: Some(UID),
            fs_group: Some(UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]),
        termination_grace_period_seconds: Some(2),
        ..Default::default()
    }
}

/// A pod that runs `script` once and exits; its exit code is the verdict.
pub fn script_pod(settings: &Settings, name: &str, script: &str, automount_token: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(pod_spec(
            node_container(settings, "main", script),
            automount_token,
            "Never",
        )),
        ..Default::default()
    }
}

/// A Deployment of `replicas` pods answering HTTP on `port` via `script`,
/// with a readiness probe on `/`.
pub fn http_deployment(settings: &Settings, name: &str, port: i32, script: &str) -> Deployment {
    let labels = BTreeMap::from([("app.kubernetes.io/name".to_string(), name.to_string())]);
    let mut container = node_container(settings, "web", script);
    container.ports = Some(vec![ContainerPort {
        container_port: port,
        name: Some("http".into()),
        ..Default::default()
    }]);
    container.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec(container, false, "Always")),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
