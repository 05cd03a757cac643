import Foundation
import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// How jitd reaches a running session: a line on its terminal, and a signal to the process PAM reported.
public protocol SessionControl: Sendable {
    /// The process's start time (clock ticks since boot), 0 if it is gone.
    func startTicks(pid: Int32) -> Int64
    func warn(_ s: Store.Session, message: String)
    func terminate(_ s: Store.Session)
}

/// The real thing: /proc for identity, the session's tty for warnings, SIGTERM then SIGKILL to end it.
public struct ProcessSessions: SessionControl {
    public init() {}

    public func startTicks(pid: Int32) -> Int64 {
        guard pid > 1, let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return 0 }
        // Fields after "(comm)": state is field 3; starttime is field 22.
        let rest = text[text.index(after: close)...].split(separator: " ")
        guard rest.count > 19, let t = Int64(rest[19]) else { return 0 }
        return t
    }

    /// Writes to the session's terminal, only if it is a real terminal device under /dev.
    public func warn(_ s: Store.Session, message: String) {
        let tty = s.tty.hasPrefix("/dev/") ? s.tty : "/dev/" + s.tty
        guard !s.tty.isEmpty, !tty.contains(".."), tty.hasPrefix("/dev/pts/") || tty.hasPrefix("/dev/tty") else { return }
        let fd = open(tty, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR else { return }
        var bytes = Array("\r\n*** jit-access: \(message) ***\r\n".utf8)
        _ = write(fd, &bytes, bytes.count)
    }

    /// SIGTERM, then SIGKILL two seconds later, to the process PAM reported, if it is still the same process.
    public func terminate(_ s: Store.Session) {
        guard s.pid > 1, s.startTicks != 0, startTicks(pid: s.pid) == s.startTicks else { return }
        kill(s.pid, SIGTERM)
        let me = self
        let t = Thread {
            Thread.sleep(forTimeInterval: 2)
            if me.startTicks(pid: s.pid) == s.startTicks { kill(s.pid, SIGKILL) }
        }
        t.start()
    }
}

extension Engine {
    /// When a grant ends: each session opened under it moves to another active grant that covers it, or is
    /// ended (policy `on_expiry: terminate`) or left running (`keep`: only new logins and sudo stop).
    func endSessions(of g: Grant) {
        do {
            for s in try store.openSessions(grantID: g.id) {
                if let other = try store.coveringGrant(user: s.user, kind: ServiceKind(service: s.service), now: clock.now()) {
                    try store.rebindSession(s.id, to: other.id)
                    continue
                }
                switch config.policy.onExpiry {
                case .keep:
                    logger.info("session \(s.id) of \(s.user) kept running after grant \(g.id) \(g.state.rawValue) (on_expiry: keep)")
                case .terminate:
                    sessions.warn(s, message: "your access (grant \(g.id)) has \(g.state == .revoked ? "been revoked" : "expired"); this session is ending")
                    sessions.terminate(s)
                    _ = try store.closeSession(id: s.id, user: nil, service: nil, pid: nil, at: clock.now(), by: "jitd: grant \(g.id) \(g.state.rawValue)")
                    logger.notice("session \(s.id) of \(s.user) (pid \(s.pid)) ended: grant \(g.id) \(g.state.rawValue)")
                }
            }
        } catch {
            logger.error("ending sessions of grant \(g.id): \(error.message)")
        }
    }

    /// Warns sessions whose grant ends within `expiry_warning`; returns when the next warning is due.
    func warnSessions() -> Date? {
        let cfg = config
        guard cfg.policy.onExpiry == .terminate else { return nil }
        let now = clock.now()
        var next: Date? = nil
        do {
            let grants = Dictionary(uniqueKeysWithValues: try store.activeGrants().map { ($0.id, $0) })
            for s in try store.openGrantSessions() where s.warnedAt == nil {
                guard let gid = s.grantID, let g = grants[gid] else { continue }
                let due = g.expiresAt.addingTimeInterval(-Double(cfg.policy.expiryWarning))
                if due <= now {
                    let left = max(0, Int64(g.expiresAt.timeIntervalSince(now)))
                    sessions.warn(s, message: "your access (grant \(g.id)) ends in \(Durations.format(max(left, 1))) at \(Timestamps.format(g.expiresAt)); this session will be closed. Ask for more with jit request")
                    try store.markWarned(sessionID: s.id, at: now)
                } else if next == nil || due < next! {
                    next = due
                }
            }
        } catch {
            logger.error("session warnings: \(error.message)")
        }
        return next
    }
}
