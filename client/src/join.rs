//! Running a handful of futures at once without spawning them.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A boxed future borrowing from the caller.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls every future until all are done and answers their outputs in the given order.
/// Each wake polls every unfinished future once; the client passes one future per region
/// of a call, so that stays small. Not spawning keeps them on the caller's task: they can
/// borrow, and they are cancelled with the caller.
pub(crate) async fn join_all<'a, T>(futures: Vec<BoxFuture<'a, T>>) -> Vec<T> {
    let mut futures: Vec<Option<BoxFuture<'a, T>>> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn outputs_keep_the_input_order_and_run_concurrently() {
        let started = tokio::time::Instant::now();
        let futures: Vec<BoxFuture<'_, u64>> = (0..5u64)
            .map(|i| -> BoxFuture<'_, u64> {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(50 - i * 10)).await;
                    i
                })
            })
            .collect();
        assert_eq!(join_all(futures).await, vec![0, 1, 2, 3, 4]);
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "not one after another"
        );
        assert!(join_all::<u8>(Vec::new()).await.is_empty());
    }
}
