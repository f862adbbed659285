//! virtio-rng queue handling: a queue and its rings built from the input, then guest steps
//! (chains, lying avail indices, memory pokes) interleaved with notifications and resets.
//! The device must never panic or hang, and never report more bytes than it may serve.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skerry_vmm::devices::virtio::rng::{Rng, MAX_REQUEST_BYTES, QUEUE_SIZE};
use skerry_vmm::devices::virtio::VirtioDevice;
use skerry_vmm_fuzz::*;

#[derive(Arbitrary, Debug)]
enum Step {
    Guest(GuestStep),
    Notify,
    /// Device reset, then activation again with the same rings.
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue: QueueSpec,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    let Some(q) = build_queue(&mem, 0, QUEUE_SIZE, &input.queue) else {
        return;
    };
    let rings = [Rings::of(&q)];
    let mut rng = Rng::new(Box::<CounterEntropy>::default()).expect("rng");
    activate(&mut rng, &mem, vec![q]);
    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Guest(g) => apply_guest_step(&mem, &rings, g),
            Step::Notify => rng.process_queue(0),
            Step::Reset => {
                reactivate(
                    &mut rng,
                    &mem,
                    QUEUE_SIZE,
                    std::slice::from_ref(&input.queue),
                );
            }
        }
    }
    rng.process_queue(0);
    // Bytes handed out never exceed one request's worth per completed request.
    let m = rng.metrics;
    assert!(m.bytes <= m.requests * MAX_REQUEST_BYTES, "{m:?}");
});
