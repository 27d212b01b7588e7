//! How the operator reads many objects: the first list of each of its watches, and
//! its fresh lists.
//!
//! A watch starts from everything it selects. Listed in pages, each page is read
//! whole (its JSON, then its objects) before its objects are slimmed for the cache,
//! and a dozen watches list at once when the operator starts: at 1000 apps that
//! burst took the operator from the 77 MiB of what it keeps to 104 MiB, for good
//! (the allocator keeps what it freed). Where the API server streams a watch's first
//! list instead (`sendInitialEvents`, Kubernetes' WatchList feature, on by default
//! in 1.34 and off in 1.33), each object comes and is slimmed on its own, from the
//! API server's cache. [`Lists::probe`] asks the API server once which it does.

use std::time::Duration;

use aether_crds::AetherPolicy;
use futures::{StreamExt, TryStreamExt};
use kube::api::{WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

/// Objects a page, for watches' lists where the API server does not stream them, and
/// for fresh lists.
pub const PAGE: u32 = 100;

/// How the watches read what they start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lists {
    /// Object by object on the watch itself.
    Streamed,
    /// [`PAGE`] objects a page.
    Paged,
}

/// The annotation on the bookmark that ends a watch's streamed first list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// How long the probe waits for the end of a first list of nothing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl Lists {
    /// A watch's configuration: its first list streamed or paged.
    pub fn config(self) -> watcher::Config {
        match self {
            Lists::Streamed => watcher::Config::default().streaming_lists(),
            Lists::Paged => watcher::Config::default().page_size(PAGE),
        }
    }

    /// Ask the API server, with a streamed watch of AetherPolicies (which the operator
    /// watches anyway) labelled with a label nobody sets: one that streams ends its
    /// (empty) first list with a bookmark at once. One without the feature refuses
    /// the request (422) or, older still, never sends that bookmark. Whatever goes
    /// wrong, the watches are paged: they work everywhere.
    pub async fn probe(client: &Client) -> Self {
        let api: Api<AetherPolicy> = Api::all(client.clone());
        let params = WatchParams::streaming_lists()
            .labels("aether.dev/watch-list-probe")
            .timeout(PROBE_TIMEOUT.as_secs() as u32);
        let streamed = async {
            let mut events = api.watch(&params, "0").await?.boxed();
            while let Some(event) = events.try_next().await? {
                match event {
                    WatchEvent::Bookmark(b) if b.metadata.annotations.contains_key(INITIAL_EVENTS_END) => {
                        return Ok::<_, kube::Error>(true);
                    }
                    WatchEvent::Error(_) => return Ok(false),
                    _ => {}
                }
            }
            Ok(false)
        };
        let lists = match tokio::time::timeout(PROBE_TIMEOUT, streamed).await {
            Ok(Ok(true)) => Lists::Streamed,
            Ok(Ok(false) | Err(kube::Error::Api(_))) => Lists::Paged,
            Ok(Err(e)) => {
                warn!(error = %e, "asking whether the API server streams watches' first lists: they are paged");
                Lists::Paged
            }
            Err(_) => Lists::Paged,
        };
        info!(?lists, "how the watches list what they start from");
        lists
    }
}

/// Every object `api` lists, read [`PAGE`] a page and each `slim`med as its page
/// comes: a fresh list of a namespace's thousand objects is not held whole at once.
/// (A continue token that expired fails the list; the reconcile's retry lists
/// afresh.)
pub async fn paged<K>(api: &Api<K>, slim: impl Fn(&mut K)) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut all = Vec::new();
    let mut params = kube::api::ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        all.extend(page.items.into_iter().map(|mut object| {
            slim(&mut object);
            object
        }));
        match page.metadata.continue_ {
            // (The pages of one list are of one moment.)
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of an API server that answers every request with `status` and `body`,
    /// after checking that it is the probe's streamed watch.
    fn answering(status: u16, body: &'static str) -> Client {
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| async move {
            let query = request.uri().query().unwrap_or_default().to_string();
            assert!(
                query.contains("watch=true") && query.contains("sendInitialEvents=true"),
                "{query}"
            );
            http::Response::builder()
                .status(status)
                .body(kube::client::Body::from(body.as_bytes().to_vec()))
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn a_server_that_ends_the_first_list_with_its_bookmark_streams() {
        let bookmark = r#"{"type":"BOOKMARK","object":{"apiVersion":"aether.dev/v1alpha1","kind":"AetherPolicy","metadata":{"resourceVersion":"12","annotations":{"k8s.io/initial-events-end":"true"}}}}
"#;
        assert_eq!(Lists::probe(&answering(200, bookmark)).await, Lists::Streamed);
    }

    #[tokio::test]
    async fn a_server_that_refuses_the_request_is_listed_in_pages() {
        // Kubernetes 1.33's answer (the WatchList feature off).
        let refused = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled","reason":"Invalid","code":422}"#;
        assert_eq!(Lists::probe(&answering(422, refused)).await, Lists::Paged);
    }

    #[tokio::test]
    async fn a_server_that_never_ends_a_first_list_is_listed_in_pages() {
        // Older ones ignore the parameter: a plain watch, with no such bookmark.
        let plain = r#"{"type":"BOOKMARK","object":{"apiVersion":"aether.dev/v1alpha1","kind":"AetherPolicy","metadata":{"resourceVersion":"12"}}}
"#;
        assert_eq!(Lists::probe(&answering(200, plain)).await, Lists::Paged);
    }

    #[test]
    fn watches_are_configured_as_the_server_lists() {
        use kube::runtime::watcher::InitialListStrategy;
        assert_eq!(
            Lists::Streamed.config().initial_list_strategy,
            InitialListStrategy::StreamingList
        );
        let paged = Lists::Paged.config();
        assert_eq!(paged.initial_list_strategy, InitialListStrategy::ListWatch);
        assert_eq!(paged.page_size, Some(PAGE));
    }
}
