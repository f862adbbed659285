//! Pause/resume hand-shake between the VMM thread and the vCPU threads (no KVM here).

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    paused: bool,
    stopping: bool,
    alive: usize,
    parked: usize,
}

/// Shared run state: the VMM asks for a pause, vCPUs park until resumed or stopped.
#[derive(Debug, Default)]
pub struct RunControl {
    state: Mutex<State>,
    cv: Condvar,
}

impl RunControl {
    /// A control for `vcpus` running vCPUs.
    pub fn new(vcpus: usize) -> Self {
        RunControl {
            state: Mutex::new(State {
                alive: vcpus,
                ..State::default()
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the VM paused; the caller then kicks the vCPUs and calls [`Self::wait_parked`].
    pub fn request_pause(&self) {
        self.lock().paused = true;
    }

    /// Blocks until every live vCPU is parked.
    pub fn wait_parked(&self) {
        let mut s = self.lock();
        while s.paused && !s.stopping && s.parked < s.alive {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.cv.notify_all();
    }

    /// Releases parked vCPUs for good (the VM is ending).
    pub fn stop(&self) {
        let mut s = self.lock();
        s.stopping = true;
        s.paused = false;
        drop(s);
        self.cv.notify_all();
    }

    /// Whether a pause is in effect.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Called by a vCPU between runs: parks while paused.
    pub fn park_if_paused(&self) {
        let mut s = self.lock();
        if !s.paused || s.stopping {
            return;
        }
        s.parked += 1;
        self.cv.notify_all();
        while s.paused && !s.stopping {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
    }

    /// Called by a vCPU whose loop ended, so pauses do not wait for it.
    pub fn vcpu_gone(&self) {
        let mut s = self.lock();
        s.alive = s.alive.saturating_sub(1);
        drop(s);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_waits_for_every_vcpu_then_resume_releases_them() {
        let ctl = Arc::new(RunControl::new(2));
        let go = Arc::new(std::sync::atomic::AtomicU32::new(0));
        ctl.request_pause();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (ctl, go) = (ctl.clone(), go.clone());
                std::thread::spawn(move || {
                    ctl.park_if_paused();
                    go.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ctl.vcpu_gone();
                })
            })
            .collect();
        ctl.wait_parked();
        assert_eq!(go.load(std::sync::atomic::Ordering::SeqCst), 0);
        ctl.resume();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(go.load(std::sync::atomic::Ordering::SeqCst), 2);
        // With no vCPU left, a pause does not block.
        ctl.request_pause();
        ctl.wait_parked();
        ctl.stop();
        assert!(!ctl.is_paused());
    }
}
