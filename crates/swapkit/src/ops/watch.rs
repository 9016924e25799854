//! The file watcher: changes to the plugin directory become one reload, once they have
//! settled and no artifact is still being written.
//!
//! On Linux, inotify reports when a file opened for writing is closed, and when a file is
//! renamed into the directory. A file that was created or written but not yet closed is
//! still being written: the reload waits for it. So an artifact published by an atomic
//! rename (write `.name.tmp`, then rename it to `name.so`) or by `cp` loads once, complete,
//! and one written slowly in place never loads half-written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use super::{Armed, Shared};
use crate::load::{is_watched, Source};

/// A writer that has shown no sign of life for this long is taken to have died: the reload
/// goes ahead, and a truncated artifact fails to load (the current generation keeps serving).
const ABANDONED: Duration = Duration::from_secs(60);

/// What the watcher has seen, in the ops state.
#[derive(Default)]
pub(crate) struct WatchState {
    pub debounce: Option<Duration>,
    dir: Option<PathBuf>,
    /// The last relevant change, while a reload for it is due.
    dirty: Option<Instant>,
    /// Artifacts opened for writing and not closed yet, with their last event.
    writing: HashMap<PathBuf, Instant>,
}

pub(crate) enum Settled {
    /// Nothing changed.
    Idle,
    /// Changes are settling, or being written: look again at this instant.
    Wait(Instant),
    /// Reload now.
    Reload,
}

impl WatchState {
    pub fn set_source(&mut self, source: &Source) {
        if self.debounce.is_some() {
            if let Some(dir) = source.dir() {
                self.dir = Some(dir.to_owned());
            }
        }
    }

    pub fn wanted_dir(&self) -> Option<PathBuf> {
        self.debounce.and(self.dir.clone())
    }

    pub fn settled(&mut self, now: Instant) -> Settled {
        let (Some(since), Some(debounce)) = (self.dirty, self.debounce) else {
            return Settled::Idle;
        };
        self.writing.retain(|path, at| {
            let alive = now.duration_since(*at) < ABANDONED;
            if !alive {
                tracing::warn!(path = %path.display(), "an artifact has been open for writing for {ABANDONED:?} with no change; reloading anyway");
            }
            alive
        });
        if !self.writing.is_empty() {
            return Settled::Wait(now + debounce.max(Duration::from_millis(100)));
        }
        if now >= since + debounce {
            self.dirty = None;
            Settled::Reload
        } else {
            Settled::Wait(since + debounce)
        }
    }

    fn seen(&mut self, event: &Event) {
        let artifacts = event.paths.iter().filter(|p| is_watched(p));
        let now = Instant::now();
        let mut relevant = false;
        for path in artifacts {
            relevant = true;
            match event.kind {
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                    self.writing.insert(path.clone(), now);
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Remove(_) => {
                    self.writing.remove(path);
                }
                EventKind::Access(_) => relevant = false,
                _ => {}
            }
        }
        // A rename out of the directory names only the old path, which may be hidden.
        if let EventKind::Modify(ModifyKind::Name(RenameMode::From)) = event.kind {
            relevant = true;
        }
        if relevant {
            self.dirty = Some(now);
        }
    }
}

/// The notify watcher, owned by the ops thread.
#[derive(Default)]
pub(crate) struct Watcher {
    current: Option<(PathBuf, RecommendedWatcher)>,
}

impl Watcher {
    pub fn dir(&self) -> Option<&Path> {
        self.current.as_ref().map(|(d, _)| d.as_path())
    }

    /// Watches `dir` instead of whatever was watched. A failure is logged: the other
    /// triggers still work.
    pub fn watch(&mut self, dir: &Path, shared: &Shared) {
        self.current = None;
        let weak = shared.me.clone();
        let handler = move |event: notify::Result<Event>| {
            let Some(shared) = weak.upgrade() else { return };
            match event {
                Ok(event) => {
                    let mut state = shared.lock();
                    state.watch.seen(&event);
                    shared.cv.notify_all();
                }
                Err(e) => tracing::warn!(error = %e, "file watcher error"),
            }
        };
        let started =
            RecommendedWatcher::new(handler, notify::Config::default()).and_then(|mut w| {
                w.watch(dir, RecursiveMode::NonRecursive)?;
                Ok(w)
            });
        match started {
            Ok(w) => {
                tracing::info!(dir = %dir.display(), "watching for new artifacts");
                let mut state = shared.lock();
                state.triggers.retain(|t| !matches!(t, Armed::Watch(_)));
                state.triggers.push(Armed::Watch(dir.to_owned()));
                drop(state);
                self.current = Some((dir.to_owned(), w));
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch the plugin directory; reload by signal or admin request instead");
                // Do not retry in a loop: remember the directory as watched.
                if let Ok(w) = RecommendedWatcher::new(|_| {}, notify::Config::default()) {
                    self.current = Some((dir.to_owned(), w));
                }
            }
        }
    }
}
