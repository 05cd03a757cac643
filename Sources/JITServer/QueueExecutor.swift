import Dispatch

/// A task executor on one serial dispatch queue of its own. A serial queue is served by libdispatch's
/// overcommitting threads, not by Swift's cooperative pool (one thread per core), so work preferring this
/// executor runs even while every cooperative thread is blocked waiting for it.
final class QueueExecutor: TaskExecutor, @unchecked Sendable {
    private let queue: DispatchQueue

    init(_ label: String) { queue = DispatchQueue(label: label) }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}
