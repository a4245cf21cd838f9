//! [`SharedTable`]: the current record table, swapped whole when the state changes.

use std::sync::{Arc, RwLock};

use super::state::{DnsState, DnsStateError};
use super::table::RecordTable;

/// The current [`RecordTable`], swapped whole on update: a query takes the table as it
/// is when it starts, and the next query after [`SharedTable::store`] sees the new one.
#[derive(Debug, Default)]
pub struct SharedTable {
    current: RwLock<Arc<RecordTable>>,
}

impl SharedTable {
    pub fn new(table: RecordTable) -> Self {
        Self {
            current: RwLock::new(Arc::new(table)),
        }
    }

    /// The current table.
    pub fn load(&self) -> Arc<RecordTable> {
        // The lock only guards a pointer swap, so a poisoned lock still holds a whole table.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `table` the current table.
    pub fn store(&self, table: RecordTable) {
        let table = Arc::new(table);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            table,
        );
        // The old table is freed here, outside the lock, unless a query still holds it.
        drop(old);
    }

    /// Builds the table of `state` and makes it current; a refused state leaves the
    /// current table in force.
    pub fn update(&self, state: &DnsState) -> Result<(), DnsStateError> {
        self.store(RecordTable::build(state)?);
        Ok(())
    }
}
