//! Extensions: started by `build` with a handle on the swapper, stopped first when it drops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use swapkit::{Extension, LoadError, Swapper};

struct Recorder {
    started: Arc<AtomicBool>,
    /// The generation the handle still read when the extension stopped, plus one.
    stopped: Arc<AtomicU64>,
}

struct Running {
    swapper: Swapper,
    stopped: Arc<AtomicU64>,
}

impl Extension for Recorder {
    fn start(self: Box<Self>, swapper: Swapper) -> Result<Box<dyn Send>, LoadError> {
        self.started.store(true, Ordering::SeqCst);
        Ok(Box::new(Running {
            swapper,
            stopped: self.stopped,
        }))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopped
            .store(self.swapper.generation() + 1, Ordering::SeqCst);
    }
}

#[test]
fn an_extension_starts_with_the_swapper_and_stops_before_it() {
    let started = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(AtomicU64::new(0));
    let swapper = Swapper::builder()
        .extend(Recorder {
            started: started.clone(),
            stopped: stopped.clone(),
        })
        .build()
        .unwrap();
    assert!(started.load(Ordering::SeqCst));
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        0,
        "running while the swapper lives"
    );
    drop(swapper);
    // Its handle still worked when it was stopped.
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
}

struct Refuses;

impl Extension for Refuses {
    fn start(self: Box<Self>, _: Swapper) -> Result<Box<dyn Send>, LoadError> {
        Err(LoadError::Ops {
            what: "extension",
            at: "test".into(),
            source: "it refuses to start".into(),
        })
    }
}

#[test]
fn an_extension_that_cannot_start_fails_the_build() {
    let err = Swapper::builder().extend(Refuses).build().err().unwrap();
    assert!(err.to_string().contains("it refuses to start"), "{err}");
}
