//! Which connection each child process belongs to, so that the exits the loop reaps by pid (see
//! [`super::process::ExitWatcher`]) reach the command they end.
//!
//! Two things make this more than a map from pid to connection:
//!
//! - A child started by the spawner threads can exit, and be reaped, before the loop has
//!   learned that it was started. Its exit is kept until the connection claims the pid, or
//!   until every start that could have made it has been reported without claiming it (a start
//!   that failed after its child existed, or an orphan reparented to a server that is PID 1):
//!   then no claim can come, and a kept exit would be handed to a later child given the same
//!   pid ([`ChildTable::forget_unclaimable`]). To tell when that is, each start handed to the
//!   spawner threads gets a ticket, a number counting up (see [`super::spawner`]), and a kept
//!   exit remembers the tickets handed out when it was reaped.
//! - The kernel reuses a pid as soon as it has been reaped. An entry must therefore go exactly
//!   when its exit is taken: one left behind would send the exit of a later child with the same
//!   pid to the wrong connection, and that later command would never finish.

use std::collections::{HashMap, HashSet};

use super::connection::ConnId;
use crate::protocol::ExitStatus;

/// Where a reaped exit belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitRoute {
    /// The command of this connection.
    Owner(ConnId),
    /// A child started for a connection that had gone, killed and now reaped.
    Unwanted,
    /// Not claimed yet: kept until the spawner's report of its start is handled.
    KeptForClaim,
    /// Nothing of ours.
    Unknown,
}

/// The children the server started and has not reaped yet, and early exits.
#[derive(Default)]
pub struct ChildTable {
    owners: HashMap<u32, ConnId>,
    /// Exits kept for a claim, with the spawner's ticket count when each was reaped
    /// ([`ticket_watermark`]): only a start with a smaller ticket can claim it.
    ///
    /// [`ticket_watermark`]: super::spawner::Spawner::ticket_watermark
    early_exits: HashMap<u32, (ExitStatus, u64)>,
    unwanted: HashSet<u32>,
}

impl ChildTable {
    /// Routes the exit of `pid`, just reaped. `ticket_watermark`: the spawner's
    /// [`ticket_watermark`] now (its ticket count while it may still report children it started,
    /// for an unknown pid may be one of those; `None` when no start is outstanding).
    ///
    /// [`ticket_watermark`]: super::spawner::Spawner::ticket_watermark
    pub fn exited(
        &mut self,
        pid: u32,
        status: ExitStatus,
        ticket_watermark: Option<u64>,
    ) -> ExitRoute {
        if let Some(conn) = self.owners.remove(&pid) {
            ExitRoute::Owner(conn)
        } else if self.unwanted.remove(&pid) {
            ExitRoute::Unwanted
        } else if let Some(tickets_issued) = ticket_watermark {
            self.early_exits.insert(pid, (status, tickets_issued));
            ExitRoute::KeptForClaim
        } else {
            ExitRoute::Unknown
        }
    }

    /// Connection `conn` takes the child `pid` it started. Returns the child's exit if it was
    /// reaped already; the pid is then not recorded, since it is no longer the child's.
    pub fn claim(&mut self, pid: u32, conn: ConnId) -> Option<ExitStatus> {
        let early = self.early_exits.remove(&pid).map(|(status, _)| status);
        if early.is_none() {
            self.owners.insert(pid, conn);
        }
        early
    }

    /// The connection that owns `pid` has reaped it itself (`ChildProcess::try_reap`): forget
    /// the pid, which the watcher will never report and the kernel may now reuse.
    #[cfg_attr(windows, allow(dead_code))] // Windows exits all come through the watcher
    pub fn reaped_by_owner(&mut self, pid: u32) {
        self.owners.remove(&pid);
    }

    /// A child started for a connection that has gone. Returns true if it is still running (the
    /// caller kills it; its exit is then expected), false if it was reaped already.
    #[cfg_attr(windows, allow(dead_code))] // only the Unix spawner threads start children late
    pub fn disown(&mut self, pid: u32) -> bool {
        if self.early_exits.remove(&pid).is_some() {
            return false;
        }
        self.owners.remove(&pid);
        self.unwanted.insert(pid);
        true
    }

    /// Lets go of the kept exits no start can claim any more: those reaped when every start
    /// still outstanding had a ticket below `oldest_outstanding`, which have all been reported
    /// now. Call after the reported starts have been handed to their connections.
    #[cfg_attr(windows, allow(dead_code))] // only the Unix spawner threads start children late
    pub fn forget_unclaimable(&mut self, oldest_outstanding: u64) {
        self.early_exits.retain(|pid, (status, tickets_issued)| {
            let claimable = *tickets_issued > oldest_outstanding;
            if !claimable {
                log::debug!("pid {pid} ({status}) was reaped, and no start of ours claimed it");
            }
            claimable
        });
    }

    /// How many children have not been reaped yet.
    pub fn running(&self) -> usize {
        self.owners.len() + self.unwanted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: ExitStatus = ExitStatus::Exited { code: 0 };

    #[test]
    fn an_exit_goes_to_the_connection_that_claimed_the_pid() {
        let mut table = ChildTable::default();
        assert_eq!(table.claim(100, 7), None);
        assert_eq!(table.exited(100, DONE, None), ExitRoute::Owner(7));
        assert_eq!(table.running(), 0);
    }

    #[test]
    fn an_exit_reaped_before_the_claim_is_handed_over_and_leaves_nothing_behind() {
        let mut table = ChildTable::default();
        assert_eq!(table.exited(100, DONE, Some(1)), ExitRoute::KeptForClaim);
        assert_eq!(table.claim(100, 7), Some(DONE));
        assert_eq!(table.running(), 0);
        // The kernel gives pid 100 to a child of another connection, which also exits before
        // it is claimed: its exit must be kept for that connection, not sent to the first.
        assert_eq!(table.exited(100, DONE, Some(1)), ExitRoute::KeptForClaim);
        assert_eq!(table.claim(100, 8), Some(DONE));
        // And once more, claimed before it exits.
        assert_eq!(table.claim(100, 9), None);
        assert_eq!(table.exited(100, DONE, None), ExitRoute::Owner(9));
    }

    #[test]
    fn a_child_reaped_by_its_owner_leaves_its_pid_free_for_the_next() {
        let mut table = ChildTable::default();
        assert_eq!(table.claim(100, 7), None);
        table.reaped_by_owner(100);
        assert_eq!(table.running(), 0);
        assert_eq!(table.claim(100, 8), None);
        assert_eq!(table.exited(100, DONE, None), ExitRoute::Owner(8));
    }

    #[test]
    fn an_exit_no_start_can_claim_is_let_go_and_not_given_to_a_later_child() {
        let mut table = ChildTable::default();
        // Reaped while the starts with tickets 0, 1 and 2 were outstanding.
        assert_eq!(table.exited(100, DONE, Some(3)), ExitRoute::KeptForClaim);
        // Ticket 2 is still outstanding: it may yet claim pid 100.
        table.forget_unclaimable(2);
        assert_eq!(table.claim(100, 7), Some(DONE));
        // Reaped again, and every start before it is reported without claiming it (a failed
        // start whose child existed, an orphan of a server that is PID 1).
        assert_eq!(table.exited(100, DONE, Some(3)), ExitRoute::KeptForClaim);
        table.forget_unclaimable(3);
        // A later command that is given pid 100 is running, not ended by that old exit.
        assert_eq!(table.claim(100, 8), None);
        assert_eq!(table.exited(100, DONE, None), ExitRoute::Owner(8));
    }

    #[test]
    fn a_disowned_child_is_expected_once_unless_already_reaped() {
        let mut table = ChildTable::default();
        assert!(table.disown(100));
        assert_eq!(table.running(), 1);
        assert_eq!(table.exited(100, DONE, None), ExitRoute::Unwanted);
        assert_eq!(table.exited(100, DONE, None), ExitRoute::Unknown);
        assert_eq!(table.exited(200, DONE, Some(1)), ExitRoute::KeptForClaim);
        assert!(!table.disown(200), "already reaped: nothing to kill");
        assert_eq!(table.running(), 0);
    }
}
