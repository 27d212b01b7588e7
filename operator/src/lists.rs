//! How the operator reads many objects: the first list of each of its watches, and
//! its fresh lists.
//!
//! A watch starts from everything it selects. Listed in pages, each page is read
//! whole (its JSON, then its objects) before its objects are slimmed for the cache,
//! and a dozen watches list at once when the operator starts: at 1000 apps that
//! burst took the operator from the 77 MiB of what it keeps to 104 MiB, for good
//! (the allocator keeps what it freed). Where the API server streams a watch's first
//! list instead (`sendInitialEvents`, Kubernetes' WatchList feature, on by default
//! in 1.34 and off in 1.33), each object comes and is slimmed on its own: 83 MiB.
//! [`Lists::probe`] asks the API server once, when the operator starts, which it
//! does.
//!
//! Two differences. A streamed first list comes from the API server's cache, which
//! may be a moment behind etcd (as every watch event is); the watch then catches up.
//! And the choice holds until the operator restarts: a watch that reaches an API
//! server without the feature (one still on 1.33 while a control plane is upgraded,
//! or all of them after a rollback) is refused and retried until one with it
//! answers, or the operator restarts and asks again.

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

/// The answers that say the API server does not stream first lists: 422 (Kubernetes
/// 1.19 to 1.26 refuse `resourceVersionMatch` on a watch, 1.27 to 1.33 with the
/// feature off `sendInitialEvents`), 400 (some proxies).
fn refused(code: u16) -> bool {
    code == 400 || code == 422
}

/// How long the probe may take in all, and how long it waits between attempts when
/// the API server could not answer (started a moment before the operator, say).
const PROBE_WITHIN: Duration = Duration::from_secs(10);
const PROBE_RETRY: Duration = Duration::from_millis(500);

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
    /// the request ([`refused`]). Anything else (no answer, another error, a watch
    /// that ends without that bookmark) is asked again for [`PROBE_WITHIN`]; after
    /// that the watches are paged: they work everywhere.
    pub async fn probe(client: &Client) -> Self {
        let lists = Self::probe_within(client, PROBE_WITHIN).await;
        info!(?lists, "how the watches list what they start from");
        lists
    }

    async fn probe_within(client: &Client, within: Duration) -> Self {
        let api: Api<AetherPolicy> = Api::all(client.clone());
        let params = WatchParams::streaming_lists()
            .labels("aether.dev/watch-list-probe")
            .timeout(within.as_secs().max(1) as u32);
        // One answer: how the watches list, or why to ask again.
        let ask = || async {
            let mut events = match api.watch(&params, "0").await {
                Ok(events) => events.boxed(),
                Err(kube::Error::Api(e)) if refused(e.code) => return Ok(Lists::Paged),
                Err(e) => return Err(e.to_string()),
            };
            loop {
                match events.try_next().await {
                    Ok(Some(WatchEvent::Bookmark(b)))
                        if b.metadata.annotations.contains_key(INITIAL_EVENTS_END) =>
                    {
                        return Ok(Lists::Streamed);
                    }
                    Ok(Some(WatchEvent::Error(e))) if refused(e.code) => return Ok(Lists::Paged),
                    Ok(Some(WatchEvent::Error(e))) => return Err(e.message),
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("the watch ended before its first list did".to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let asked = async {
            loop {
                match ask().await {
                    Ok(lists) => return lists,
                    Err(why) => {
                        warn!(%why, "asking whether the API server streams watches' first lists: asking again");
                        tokio::time::sleep(PROBE_RETRY).await;
                    }
                }
            }
        };
        tokio::time::timeout(within, asked).await.unwrap_or_else(|_| {
            warn!("the API server did not say whether it streams watches' first lists: they are paged");
            Lists::Paged
        })
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

    /// A client of an API server that answers each request with the next of
    /// `answers` (the last one again once they run out), after checking that it is
    /// the probe's streamed watch.
    fn answering(answers: &[(u16, &'static str)]) -> Client {
        let answers = std::sync::Arc::new(std::sync::Mutex::new(answers.to_vec()));
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let answers = answers.clone();
            async move {
                let query = request.uri().query().unwrap_or_default().to_string();
                assert!(
                    query.contains("watch=true") && query.contains("sendInitialEvents=true"),
                    "{query}"
                );
                let (status, body) = {
                    let mut answers = answers.lock().unwrap();
                    if answers.len() > 1 {
                        answers.remove(0)
                    } else {
                        answers[0]
                    }
                };
                http::Response::builder()
                    .status(status)
                    .body(kube::client::Body::from(body.as_bytes().to_vec()))
            }
        });
        Client::new(service, "default")
    }

    const BOOKMARK: &str = r#"{"type":"BOOKMARK","object":{"apiVersion":"aether.dev/v1alpha1","kind":"AetherPolicy","metadata":{"resourceVersion":"12","annotations":{"k8s.io/initial-events-end":"true"}}}}
"#;

    #[tokio::test]
    async fn a_server_that_ends_the_first_list_with_its_bookmark_streams() {
        assert_eq!(
            Lists::probe(&answering(&[(200, BOOKMARK)])).await,
            Lists::Streamed
        );
    }

    #[tokio::test]
    async fn a_server_that_refuses_the_request_is_listed_in_pages() {
        // Kubernetes 1.33's answer (the WatchList feature off).
        let refused = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled","reason":"Invalid","code":422}"#;
        assert_eq!(Lists::probe(&answering(&[(422, refused)])).await, Lists::Paged);
        // At once, not after asking again for the probe's whole time.
        let began = std::time::Instant::now();
        let proxy = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"bad request","reason":"BadRequest","code":400}"#;
        assert_eq!(Lists::probe(&answering(&[(400, proxy)])).await, Lists::Paged);
        assert!(began.elapsed() < PROBE_RETRY, "{:?}", began.elapsed());
    }

    #[tokio::test]
    async fn a_server_that_never_ends_a_first_list_is_listed_in_pages() {
        // One that ignores the parameter (a proxy that drops it, say): a plain watch,
        // with no such bookmark, asked again until the probe gives up.
        let plain = r#"{"type":"BOOKMARK","object":{"apiVersion":"aether.dev/v1alpha1","kind":"AetherPolicy","metadata":{"resourceVersion":"12"}}}
"#;
        let within = Duration::from_secs(1);
        assert_eq!(
            Lists::probe_within(&answering(&[(200, plain)]), within).await,
            Lists::Paged
        );
    }

    #[tokio::test]
    async fn a_server_that_could_not_answer_is_asked_again() {
        let unavailable = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}"#;
        let began = std::time::Instant::now();
        let client = answering(&[(503, unavailable), (503, unavailable), (200, BOOKMARK)]);
        assert_eq!(Lists::probe(&client).await, Lists::Streamed);
        assert!(
            began.elapsed() >= 2 * PROBE_RETRY,
            "waited between: {:?}",
            began.elapsed()
        );
        // A watch the API server ended early (restarting) is asked again too.
        let ended = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server is shutting down","reason":"ServiceUnavailable","code":503}}
"#;
        let client = answering(&[(200, ended), (200, BOOKMARK)]);
        assert_eq!(Lists::probe(&client).await, Lists::Streamed);
        // One that never answers is given up on: paged.
        let client = answering(&[(503, unavailable)]);
        let within = Duration::from_secs(1);
        assert_eq!(Lists::probe_within(&client, within).await, Lists::Paged);
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
