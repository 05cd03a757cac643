public import Foundation
import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// How jitd reaches a running session: a line on its terminal, and an end to every process of it.
public protocol SessionControl: Sendable {
    /// The process's start time (clock ticks since boot), 0 if it is gone.
    func startTicks(pid: Int32) -> Int64
    func warn(_ s: Store.Session, message: String)
    /// Ends every process of the session (not only the one PAM reported).
    func terminate(_ s: Store.Session)
    /// Ends every process of `uid` started between `from` and `to` (under a grant; the user holds none any more).
    func endProcesses(uid: UInt32, startedFrom from: Date, to: Date)
}

extension SessionControl {
    public func endProcesses(uid: UInt32, startedFrom from: Date, to: Date) {}
}

/// One process as /proc shows it.
struct ProcEntry: Equatable {
    var pid: Int32
    var ppid: Int32
    var sid: Int32
    var ttyNr: Int64
    var startTicks: Int64
    var uid: UInt32
}

/// The real thing: /proc for identity, the session's terminal for warnings, SIGTERM then SIGKILL to end it.
///
/// A session is the process PAM reported (sshd's per-connection process) and everything below it: its
/// descendants, every process in the same POSIX session as any of them (so `nohup` children that were
/// reparented to init still count), and, where systemd runs, every process in the logind session's cgroup.
/// Each process is named by (pid, start time), re-checked before every signal, so a reused PID is never hit.
public struct ProcessSessions: SessionControl {
    /// Where /proc is (tests may point it elsewhere).
    let proc: String
    /// Seconds between SIGTERM and SIGKILL.
    let grace: Double

    public init() { self.init(proc: "/proc", grace: 2) }
    init(proc: String, grace: Double) {
        self.proc = proc
        self.grace = grace
    }

    public func startTicks(pid: Int32) -> Int64 {
        entry(pid)?.startTicks ?? 0
    }

    func entry(_ pid: Int32) -> ProcEntry? {
        guard pid > 0, let text = try? String(contentsOfFile: "\(proc)/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // Fields after "(comm)": 3 state, 4 ppid, 5 pgrp, 6 session, 7 tty_nr, ..., 22 starttime.
        let rest = text[text.index(after: close)...].split(separator: " ")
        guard rest.count > 19, let ppid = Int32(rest[1]), let sid = Int32(rest[3]), let tty = Int64(rest[4]), let t = Int64(rest[19]) else { return nil }
        var st = stat()
        guard stat("\(proc)/\(pid)", &st) == 0 else { return nil }
        return ProcEntry(pid: pid, ppid: ppid, sid: sid, ttyNr: tty, startTicks: t, uid: st.st_uid)
    }

    func all() -> [ProcEntry] {
        ((try? FileManager.default.contentsOfDirectory(atPath: proc)) ?? []).compactMap { Int32($0) }.compactMap(entry)
    }

    /// The session's processes: the reported one if it is still the same process, its descendants, and every
    /// process sharing a POSIX session with one of them.
    static func members(of s: Store.Session, in procs: [ProcEntry]) -> [ProcEntry] {
        guard s.pid > 1, s.startTicks != 0, let root = procs.first(where: { $0.pid == s.pid }), root.startTicks == s.startTicks else { return [] }
        var children: [Int32: [ProcEntry]] = [:]
        for p in procs { children[p.ppid, default: []].append(p) }
        var tree: [ProcEntry] = []
        var todo = [root]
        var seen: Set<Int32> = []
        while let p = todo.popLast() {
            guard seen.insert(p.pid).inserted else { continue }
            tree.append(p)
            todo += children[p.pid] ?? []
        }
        // Session IDs of the tree, but never one the tree merely inherited from above (init's, sshd's listener's).
        let sids = Set(tree.map(\.sid).filter { sid in sid > 1 && tree.contains { $0.pid == sid } })
        var out = tree
        for p in procs where sids.contains(p.sid) && !seen.contains(p.pid) { out.append(p) }
        return out.filter { $0.pid > 1 && $0.pid != getpid() }
    }

    /// Writes to the session's terminal: the one PAM gave when it is a terminal device, else the ptys its
    /// processes hold (sshd reports the tty as "ssh"), and then only a pty owned by the session's user.
    public func warn(_ s: Store.Session, message: String) {
        let given = s.tty.hasPrefix("/dev/") ? s.tty : "/dev/" + s.tty
        var targets: [(path: String, owner: UInt32?)] = []
        if !s.tty.isEmpty, !given.contains(".."), given.hasPrefix("/dev/pts/") || given.hasPrefix("/dev/tty") {
            targets.append((given, nil))
        } else if let pw = getpwnam(s.user) {
            let uid = pw.pointee.pw_uid
            for p in ProcessSessions.members(of: s, in: all()) where p.ttyNr != 0 {
                if let pts = ProcessSessions.ptsPath(ttyNr: p.ttyNr), !targets.contains(where: { $0.path == pts }) { targets.append((pts, uid)) }
            }
        }
        for t in targets {
            let fd = open(t.path, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR, t.owner.map({ $0 == st.st_uid }) ?? true else { continue }
            var bytes = Array("\r\n*** jit-access: \(message) ***\r\n".utf8)
            _ = write(fd, &bytes, bytes.count)
        }
    }

    /// /dev/pts/N for a Unix98 pty's device number (majors 136-143), nil for anything else.
    static func ptsPath(ttyNr: Int64) -> String? {
        let major = (ttyNr >> 8) & 0xfff
        let minor = (ttyNr & 0xff) | ((ttyNr >> 12) & 0xfff00)
        guard (136...143).contains(major) else { return nil }
        return "/dev/pts/\((major - 136) * 256 + minor)"
    }

    /// The logind session cgroups (`.../session-N.scope`) the processes are in, where systemd runs.
    func sessionCgroups(_ ps: [ProcEntry]) -> Set<String> {
        guard FileManager.default.fileExists(atPath: "/run/systemd/system") else { return [] }
        var out: Set<String> = []
        for p in ps {
            guard let text = try? String(contentsOfFile: "\(proc)/\(p.pid)/cgroup", encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                // cgroup v2: "0::/user.slice/user-1000.slice/session-4.scope"
                guard line.hasPrefix("0::"), let path = line.split(separator: ":", maxSplits: 2).last,
                      path.hasSuffix(".scope"), path.split(separator: "/").last?.hasPrefix("session-") == true, !path.contains("..") else { continue }
                out.insert("/sys/fs/cgroup" + path)
            }
        }
        return out
    }

    func cgroupMembers(_ dirs: Set<String>, in procs: [ProcEntry]) -> [ProcEntry] {
        var pids: Set<Int32> = []
        for d in dirs {
            let text = (try? String(contentsOfFile: d + "/cgroup.procs", encoding: .utf8)) ?? ""
            for l in text.split(separator: "\n") { if let p = Int32(l) { pids.insert(p) } }
        }
        return procs.filter { pids.contains($0.pid) && $0.pid > 1 && $0.pid != getpid() }
    }

    /// Signals a process only if it is still the same one (same start time).
    func signal(_ p: ProcEntry, _ sig: Int32) {
        guard let now = entry(p.pid), now.startTicks == p.startTicks else { return }
        kill(p.pid, sig)
    }

    /// Stops every process first (repeating while new ones appear, so a fork during the sweep cannot escape),
    /// then SIGTERM and SIGCONT, and SIGKILL to what is left after the grace period.
    func end(collect: () -> [ProcEntry]) {
        var stopped: [Int32: ProcEntry] = [:]
        for _ in 0..<8 {
            let found = collect().filter { stopped[$0.pid]?.startTicks != $0.startTicks }
            if found.isEmpty { break }
            for p in found {
                signal(p, SIGSTOP)
                stopped[p.pid] = p
            }
        }
        guard !stopped.isEmpty else { return }
        for p in stopped.values {
            signal(p, SIGTERM)
            signal(p, SIGCONT)
        }
        let me = self
        let victims = Array(stopped.values)
        let t = Thread {
            Thread.sleep(forTimeInterval: me.grace)
            for p in victims { me.signal(p, SIGKILL) }
        }
        t.start()
    }

    public func terminate(_ s: Store.Session) {
        end {
            let procs = all()
            let ms = ProcessSessions.members(of: s, in: procs)
            return ms + cgroupMembers(sessionCgroups(ms), in: procs)
        }
    }

    public func endProcesses(uid: UInt32, startedFrom from: Date, to: Date) {
        guard uid != 0, let a = ProcessSessions.ticks(at: from, proc: proc), let b = ProcessSessions.ticks(at: to, proc: proc) else { return }
        // Two ticks short of the end: a process started at the very end is left alone rather than risk one
        // started just after.
        end { all().filter { $0.uid == uid && $0.startTicks >= a && $0.startTicks <= b - 2 && $0.pid > 1 && $0.pid != getpid() } }
    }

    /// A wall-clock time as clock ticks since boot (the unit of /proc/PID/stat's starttime), counted back from
    /// /proc/uptime (10 ms resolution; /proc/stat's btime is whole seconds, too coarse to tell a process started
    /// just after a grant ended from one started just before).
    static func ticks(at d: Date, proc: String) -> Int64? {
        guard let text = try? String(contentsOfFile: "\(proc)/uptime", encoding: .utf8),
              let up = text.split(separator: " ").first.flatMap({ Double($0) }) else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        return Int64(max(0, (up - Date().timeIntervalSince(d)) * hz))
    }
}

extension Engine {
    /// How strongly a grant was approved: the number of distinct human approvers (automatic rules and
    /// break-glass: none). A session only ever moves to a grant at least as strong as the one it ran under.
    func approvalStrength(_ g: Grant) -> Int {
        guard let r = try? store.request(id: g.requestID), r.approvedVia == .approvers else { return 0 }
        return max(1, r.approvals.count)
    }

    /// When a grant ends: each session opened under it moves to another active grant that covers it and came
    /// through an approval path at least as strong (an automatic rule never keeps a login approved by a person
    /// alive), or is ended (policy `on_expiry: terminate`: every process of the session) or left running
    /// (`keep`: only new logins and sudo stop). When the user then holds no grant at all, their processes
    /// started under the grant (between its start and its end) end too (`terminate` only).
    func endSessions(of g: Grant) {
        let now = clock.now()
        let cfg = config
        do {
            let need = approvalStrength(g)
            for s in try store.openSessions(grantID: g.id) {
                let candidates = try store.coveringGrants(user: s.user, kind: ServiceKind(service: s.service), now: now)
                if let other = candidates.filter({ $0.id != g.id && approvalStrength($0) >= need }).max(by: { $0.expiresAt < $1.expiresAt }) {
                    try store.rebindSession(s.id, to: other.id)
                    logger.info("session \(s.id) of \(s.user) now runs under grant \(other.id) (grant \(g.id) \(g.state.rawValue))")
                    continue
                }
                switch cfg.policy.onExpiry {
                case .keep:
                    logger.info("session \(s.id) of \(s.user) kept running after grant \(g.id) \(g.state.rawValue) (on_expiry: keep)")
                case .terminate:
                    sessions.warn(s, message: "your access (grant \(g.id)) has \(g.state == .revoked ? "been revoked" : "expired"); this session is ending")
                    // Recorded first: the ended session's own PAM close (from the process being ended) finds it closed.
                    _ = try store.closeSession(id: s.id, user: nil, service: nil, pid: nil, at: now, by: "jitd: grant \(g.id) \(g.state.rawValue)")
                    sessions.terminate(s)
                    logger.notice("session \(s.id) of \(s.user) (pid \(s.pid)) ended: grant \(g.id) \(g.state.rawValue)")
                }
            }
            if cfg.policy.onExpiry == .terminate, g.uid != 0, try !store.activeGrants().contains(where: { $0.user == g.user && $0.expiresAt > now }),
               let who = directory.user(name: g.user), who.uid == g.uid, cfg.policy.gates(who) {
                // Only what started under the grant: from its start to its end (a late expiry, e.g. at a restart,
                // never reaches what the user started after the grant was over).
                let end = min(g.expiresAt, g.endedAt ?? now)
                sessions.endProcesses(uid: g.uid, startedFrom: g.startsAt, to: end)
                logger.notice("\(g.user) holds no grant any more: their processes started under grant \(g.id) (\(Timestamps.format(g.startsAt)) to \(Timestamps.format(end))) are ended")
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
