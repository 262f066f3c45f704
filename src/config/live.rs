//! The channel table in force, which a reload may replace while VMMs are being served.
//!
//! This file owns [`LiveChannels`], the handle shared by the one writer (the signal thread,
//! which replaces the table when `--channels-file` is re-read on SIGHUP) and the readers (every
//! device, which looks a channel type up when a context INITs), and [`ChannelView`], a reader's
//! cached copy. A replaced table never changes what already exists: a context keeps the socket
//! it was connected to at INIT, whatever the new table says.
//!
//! Cost on the data path: a [`ChannelView`] checks one atomic generation counter each time it
//! is asked for the table, and takes the lock only after a reload.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::ChannelTable;

/// The channel table in force, shared: clones are handles to the same table.
#[derive(Clone)]
pub struct LiveChannels(Arc<Live>);

struct Live {
    table: RwLock<Arc<ChannelTable>>,
    /// Incremented by every [`LiveChannels::replace`], after the table is stored.
    generation: AtomicU64,
}

impl LiveChannels {
    /// A handle whose table is `table` until the first [`LiveChannels::replace`].
    pub fn new(table: ChannelTable) -> Self {
        Self::from(Arc::new(table))
    }

    /// The table in force now.
    pub fn load(&self) -> Arc<ChannelTable> {
        // A writer that panicked left a whole table behind (the store is one assignment).
        self.0
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `table` in force for every reader; returns the table it replaces.
    pub fn replace(&self, table: ChannelTable) -> Arc<ChannelTable> {
        let old = std::mem::replace(
            &mut *self.0.table.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(table),
        );
        // Release: a reader that sees the new generation sees the new table under the lock.
        self.0.generation.fetch_add(1, Ordering::Release);
        old
    }

    fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }
}

impl From<Arc<ChannelTable>> for LiveChannels {
    fn from(table: Arc<ChannelTable>) -> Self {
        LiveChannels(Arc::new(Live {
            table: RwLock::new(table),
            generation: AtomicU64::new(0),
        }))
    }
}

impl From<ChannelTable> for LiveChannels {
    fn from(table: ChannelTable) -> Self {
        Self::new(table)
    }
}

impl fmt::Debug for LiveChannels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveChannels").field(&self.load()).finish()
    }
}

/// One reader's view of a [`LiveChannels`]: the table as of the last look, refreshed when a
/// reload has replaced it since.
pub struct ChannelView {
    live: LiveChannels,
    seen: u64,
    table: Arc<ChannelTable>,
}

impl ChannelView {
    /// The table in force now (refreshed if a reload replaced it since the last call).
    pub fn current(&mut self) -> &ChannelTable {
        let generation = self.live.generation();
        if generation != self.seen {
            self.table = self.live.load();
            // The table loaded is at least as new as `generation`; a reload between the two
            // loads is seen again on the next call, which reloads once more (harmlessly).
            self.seen = generation;
        }
        &self.table
    }
}

impl From<LiveChannels> for ChannelView {
    fn from(live: LiveChannels) -> Self {
        let seen = live.generation();
        let table = live.load();
        ChannelView { live, seen, table }
    }
}

impl From<Arc<ChannelTable>> for ChannelView {
    fn from(table: Arc<ChannelTable>) -> Self {
        LiveChannels::from(table).into()
    }
}

impl From<ChannelTable> for ChannelView {
    fn from(table: ChannelTable) -> Self {
        LiveChannels::new(table).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(specs: &[&str]) -> ChannelTable {
        let mut t = ChannelTable::new();
        for s in specs {
            t.add_channel_arg(s).unwrap();
        }
        t
    }

    #[test]
    fn views_see_a_replaced_table() {
        let live = LiveChannels::new(table(&["2:/a"]));
        let mut view = ChannelView::from(live.clone());
        let mut other = ChannelView::from(live.clone());
        assert_eq!(view.current().get(2), Some(std::path::Path::new("/a")));
        let old = live.replace(table(&["3:/b"]));
        assert_eq!(old.get(2), Some(std::path::Path::new("/a")));
        assert_eq!(view.current().get(2), None);
        assert_eq!(view.current().get(3), Some(std::path::Path::new("/b")));
        assert_eq!(other.current().len(), 1);
        assert_eq!(live.load().get(3), Some(std::path::Path::new("/b")));
        // A view of a fixed table never changes.
        let mut fixed = ChannelView::from(table(&["4:/c"]));
        assert_eq!(fixed.current().get(4), Some(std::path::Path::new("/c")));
    }
}
