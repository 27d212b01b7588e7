//! The CLI's connection to Kubernetes: the kubeconfig, context and namespace chosen
//! once, and API errors turned into ones a user can act on.

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::args::GlobalArgs;
use crate::errors::CliError;

/// The client for the chosen kubeconfig and context, and the namespace to use
/// (`-n`, else the context's, else `default`).
pub async fn connect(global: &GlobalArgs) -> Result<(Client, String), CliError> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| CliError::NoKubeconfig(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| CliError::NoKubeconfig(e.to_string()))?;
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| CliError::NoKubeconfig(e.to_string()))?;
    Ok((client, namespace))
}

/// `verb` on `resource` (plural, e.g. `aetherapps`) in `namespace` failed.
pub fn kube_error(e: kube::Error, verb: &str, resource: &str, namespace: &str) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 403 => CliError::Forbidden {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
        },
        e => CliError::Kube {
            what: format!("{verb} {resource} in {namespace}"),
            source: e,
        },
    }
}
