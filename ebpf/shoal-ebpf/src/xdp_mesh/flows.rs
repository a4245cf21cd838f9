//! The mesh's flow tables: which table a flow's entry belongs in after a frame
//! (opening, live, closing; none after a RST), and choosing a backend for a flow
//! without a usable entry (round-robin or Maglev, skipping draining and unhealthy
//! backends).

use super::*;

/// Where the flow's entry goes after this frame (`entry` as found, in the table of
/// state `table`): UDP flows and TCP connections past their handshake in the live
/// table, connections opening (a SYN) in the opening one, closing (a FIN from the
/// client) in the closing one, none after a RST. An entry that already says so is not
/// written again.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn track(
    flow: &FlowKey,
    frontend: &Frontend,
    entry: Option<FlowValue>,
    table: u8,
    backend: u32,
    opens: bool,
    resets: bool,
    closes: bool,
) {
    if resets {
        // Nothing follows a reset: free the entry now.
        if entry.is_some() {
            forget(flow, table);
            count(Counter::FlowsEnded, 1);
        }
        return;
    }
    let state = if flow.protocol != PROTO_TCP {
        FLOW_ESTABLISHED
    } else if closes {
        FLOW_CLOSING
    } else if opens {
        // A SYN on a live connection's entry (its ports reused) keeps it live.
        if entry.is_some() && table == FLOW_ESTABLISHED {
            FLOW_ESTABLISHED
        } else {
            FLOW_OPENING
        }
    } else {
        match entry {
            // The handshake's last ACK (or any later segment): the connection is live.
            Some(_) if table == FLOW_OPENING => FLOW_ESTABLISHED,
            // Segments after the client's FIN (its last ACKs) stay where they are.
            Some(_) => table,
            // A connection found again (Maglev): live, it carries segments.
            None => FLOW_ESTABLISHED,
        }
    };
    let value = FlowValue {
        backend,
        frontend: frontend.id as u16,
        state,
        pad: 0,
    };
    if let Some(v) = entry {
        if v.backend == backend && table == state {
            return;
        }
        if table != state {
            forget(flow, table);
        }
    }
    let inserted = if state == FLOW_OPENING {
        MESH_OPENING.insert(flow, &value, 0)
    } else if state == FLOW_CLOSING {
        MESH_CLOSING.insert(flow, &value, 0)
    } else if entry.is_some() && table == FLOW_ESTABLISHED {
        MESH_FLOWS.insert(flow, &value, 0)
    } else {
        // Counted once per entry made, even when another CPU makes it at the same time
        // (the evictions are inferred from this count).
        match MESH_FLOWS.insert(flow, &value, BPF_NOEXIST) {
            Ok(()) => {
                count(Counter::LiveInserted, 1);
                Ok(())
            }
            Err(_) => MESH_FLOWS.insert(flow, &value, 0),
        }
    };
    if inserted.is_err() {
        count(Counter::FlowInsertFailed, 1);
    }
}

/// Removes the flow's entry from the table of state `table`.
#[inline(always)]
pub(super) fn forget(flow: &FlowKey, table: u8) {
    if table == FLOW_ESTABLISHED {
        if MESH_FLOWS.remove(flow).is_ok() {
            count(Counter::LiveClosed, 1);
        }
    } else if table == FLOW_OPENING {
        let _ = MESH_OPENING.remove(flow);
    } else {
        let _ = MESH_CLOSING.remove(flow);
    }
}

/// The backend of the flow's entry `v` if it may still carry the flow.
#[inline(always)]
pub(super) fn usable(v: &FlowValue, frontend: &Frontend, opens: bool) -> Option<Target> {
    let key = BackendKey {
        frontend: frontend.id,
        addr: v.backend,
    };
    // SAFETY: map values are plain data.
    let b = unsafe { MESH_BACKENDS.get(&key) }?;
    // A SYN on a draining backend's flow is a new connection reusing the ports (a
    // retransmitted SYN would find its backend healthy): it goes elsewhere.
    if b.state == STATE_UNHEALTHY || (opens && b.state == STATE_DRAINING) {
        return None;
    }
    Some(Target {
        backend: v.backend,
        node: b.node,
    })
}

/// A backend for a new flow.
#[inline(always)]
pub(super) fn choose(flow: &FlowKey, frontend: &Frontend) -> Option<Target> {
    let backend = if frontend.balance == BALANCE_MAGLEV {
        if frontend.maglev_row >= shoal_common::mesh::MAX_MAGLEV_ROWS {
            return None;
        }
        let h = flow_hash(flow.src, flow.src_port, flow.dst_port, flow.protocol) % MAGLEV_SIZE;
        *MESH_MAGLEV.get(frontend.maglev_row * MAGLEV_SIZE + h)?
    } else {
        let count = frontend.count;
        if count == 0 || count > MAX_SLOTS || frontend.id >= MAX_FRONTENDS {
            return None;
        }
        let rr = MESH_RR.get_ptr_mut(frontend.id)?;
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        let n = unsafe {
            let n = *rr;
            *rr = n.wrapping_add(1);
            n
        };
        *MESH_SLOTS.get(frontend.id * MAX_SLOTS + n % count)?
    };
    if backend == 0 {
        return None;
    }
    let key = BackendKey {
        frontend: frontend.id,
        addr: backend,
    };
    // SAFETY: map values are plain data.
    let b = unsafe { MESH_BACKENDS.get(&key) }?;
    if b.state == STATE_UNHEALTHY {
        return None;
    }
    Some(Target {
        backend,
        node: b.node,
    })
}
