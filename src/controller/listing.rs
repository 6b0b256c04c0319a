//! How the watches of many objects take their first list (and every relist): streamed, as
//! watch events with `sendInitialEvents` (WatchList), where the API server serves that. A list
//! at resourceVersion=0 comes in one body whatever its limit: at 10,000 objects 22 MB, held and
//! then parsed at once, which made the peak memory of a restart. A stream is parsed one object
//! at a time while the API server is still sending the rest.
//!
//! WatchList is on by default in Kubernetes 1.32 and from 1.34 (off in 1.30, 1.31 and 1.33, and
//! it can be switched off): where the API server refuses it, the watch lists as the config says.
//! Not in pages: a page at the most recent version took about a second at 10,000 objects on a
//! loaded test control plane, where the whole list at resourceVersion=0 took three.

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::core::WatchEvent;
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// `watcher(api, config)` with a streamed list, or with the config's list where it is refused.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let streamed = watcher(api.clone(), config.clone().streaming_lists()).boxed();
    // The fallback stays possible until a streamed list has completed once.
    futures::stream::unfold(
        (streamed, Some((api, config))),
        |(mut current, fallback)| async move {
            let item = current.next().await?;
            match (item, fallback) {
                (Err(err), Some((api, config))) if refused(&err) => {
                    tracing::info!(error = %err, "the API server does not stream lists; listing instead");
                    let mut listed = watcher(api, config).boxed();
                    let first = listed.next().await?;
                    Some((first, (listed, None)))
                }
                (Ok(Event::InitDone), _) => Some((Ok(Event::InitDone), (current, None))),
                (item, fallback) => Some((item, (current, fallback))),
            }
        },
    )
    .boxed()
}

/// The objects changed from now on, while a first list is still coming: a watch from the
/// resourceVersion of a one-object list, which the API server answers at once. A streamed list
/// sends the changes made after its snapshot only once its last object is out (3 s at 10,000
/// objects), so an edit made during a start would wait for the whole list (see
/// `start::Gate::recent_change`). Await this before the main watch sends its request: every
/// change is then in that watch's list or in this stream. Ends at the first error, or when
/// `until` resolves; it only hurries passes, the main watch stays the source of truth.
pub async fn changes_from_now<K>(
    api: Api<K>,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) -> BoxStream<'static, K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let list = kube::api::ListParams::default().limit(1);
    let version = match api.list_metadata(&list).await {
        Ok(listed) => listed.metadata.resource_version,
        Err(err) => {
            tracing::debug!(error = %err, "no version to follow changes from; a start's edits wait for its list");
            None
        }
    };
    let Some(version) = version else {
        return futures::stream::empty().boxed();
    };
    futures::stream::once(async move {
        api.watch(&kube::api::WatchParams::default(), &version)
            .await
            .map(|events| events.boxed())
            .unwrap_or_else(|_| futures::stream::empty().boxed())
    })
    .flatten()
    .take_while(|event| {
        std::future::ready(matches!(
            event,
            Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Bookmark(_))
        ))
    })
    .filter_map(|event| {
        std::future::ready(match event {
            Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => Some(obj),
            _ => None,
        })
    })
    .take_until(until)
    .boxed()
}

/// The API server refused a streamed list as a request it does not know (WatchList off: 422 or
/// 400), as opposed to a failure a retry may get past.
fn refused(err: &watcher::Error) -> bool {
    let status = match err {
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status,
        watcher::Error::WatchError(status) => status,
        _ => return false,
    };
    matches!(status.code, 400 | 422)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16) -> Box<Status> {
        Box::new(Status::failure("no", "Invalid").with_code(code))
    }

    #[test]
    fn only_a_refused_request_falls_back_to_a_plain_list() {
        let start = |code| watcher::Error::WatchStartFailed(kube::Error::Api(status(code)));
        assert!(refused(&start(422)));
        assert!(refused(&start(400)));
        assert!(refused(&watcher::Error::WatchError(status(422))));
        // RBAC, an expired version, an overloaded server: retried as they are.
        assert!(!refused(&start(403)));
        assert!(!refused(&watcher::Error::WatchError(status(410))));
        assert!(!refused(&start(429)));
        assert!(!refused(&watcher::Error::NoResourceVersion));
    }
}
