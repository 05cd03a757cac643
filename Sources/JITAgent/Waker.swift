import Foundation
import CJITSys
#if canImport(Glibc)
import Glibc
#endif

/// An eventfd that one thread pokes and another polls: how a decision wakes its waiters and how a new
/// deadline wakes the expiry scheduler, without any polling loop.
public final class Waker: Sendable {
    public let fd: Int32

    public init() {
        fd = cjit_eventfd()
        precondition(fd >= 0, "eventfd failed: \(String(cString: strerror(errno)))")
    }

    deinit { close(fd) }

    public func wake() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Clears pending wake-ups.
    public func drain() {
        var v: UInt64 = 0
        _ = read(fd, &v, 8)
    }

    /// Waits until woken or `timeout` seconds pass. Returns true when woken.
    @discardableResult
    public func wait(timeout: Double) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ms = Int32(max(0, min(timeout, 3_600)) * 1000)
        let rc = poll(&p, 1, ms)
        if rc > 0 { drain(); return true }
        return false
    }
}
