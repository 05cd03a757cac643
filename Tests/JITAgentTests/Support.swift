import Foundation
import JITCore
import Synchronization
@testable import JITAgent

/// A clock the test moves by hand.
final class ManualClock: JITClock {
    let t: Mutex<Date>
    init(_ start: Date = Date(timeIntervalSince1970: 1_800_000_000)) { t = Mutex(start) }
    func now() -> Date { t.withLock { $0 } }
    func advance(_ s: Double) { t.withLock { $0 = $0.addingTimeInterval(s) } }
}

/// Users and groups without NSS.
struct FakeDirectory: UserDirectory {
    var users: [Identity]
    func user(uid: UInt32) -> Identity? { users.first { $0.uid == uid } }
    func user(name: String) -> Identity? { users.first { $0.name == name } }
    func groupExists(_ name: String) -> Bool { users.contains { $0.groups.contains(name) } }

    static let alice = Identity(uid: 2001, name: "alice", groups: ["alice", "jit-requesters"])
    static let bob = Identity(uid: 2002, name: "bob", groups: ["bob", "jit-approvers"])
    static let carol = Identity(uid: 2003, name: "carol", groups: ["carol", "jit-approvers", "jit-requesters"])
    static let dave = Identity(uid: 2004, name: "dave", groups: ["dave", "jit-approvers"])
    static let mallory = Identity(uid: 2005, name: "mallory", groups: ["mallory"])
    static let root = Identity(uid: 0, name: "root", groups: ["root"])
    // For policy rules: SRE and security approvers, a manager tier, developers, a break-glass member.
    static let erin = Identity(uid: 2006, name: "erin", groups: ["erin", "sre"])
    static let frank = Identity(uid: 2007, name: "frank", groups: ["frank", "sre", "security"])
    static let grace = Identity(uid: 2008, name: "grace", groups: ["grace", "security"])
    static let heidi = Identity(uid: 2009, name: "heidi", groups: ["heidi", "managers"])
    static let ivan = Identity(uid: 2010, name: "ivan", groups: ["ivan", "devs", "breakglass"])
    static let judy = Identity(uid: 2011, name: "judy", groups: ["judy", "devs", "sre"])
    static let standard = FakeDirectory(users: [alice, bob, carol, dave, mallory, root, erin, frank, grace, heidi, ivan, judy])
}

/// Records what the engine asked the outside world to do; can be told to fail.
final class RecordingEffects: GrantEffects {
    let log = Mutex<[String]>([])
    let failNext = Atomic<Bool>(false)
    func started(_ g: Grant) throws(JITError) {
        if failNext.exchange(false, ordering: .sequentiallyConsistent) {
            log.withLock { $0.append("failed \(g.id)") }
            throw JITError(.internal, "disk full")
        }
        log.withLock { $0.append("started \(g.id)") }
    }
    func ended(_ g: Grant) { log.withLock { $0.append("ended \(g.id) \(g.state.rawValue)") } }
    func reconcile(active: [Grant]) { log.withLock { $0.append("reconcile \(active.map(\.id))") } }
    var entries: [String] { log.withLock { $0 } }
}

/// Records policy events instead of delivering them.
final class RecordingNotifier: Notifier {
    let log = Mutex<[String]>([])
    func notify(_ event: PolicyEvent) {
        let line: String
        switch event {
        case .filed(let r, let g): line = "filed \(r.id) \(g.joined(separator: ","))"
        case .escalated(let r, let t, let g): line = "escalated \(r.id) tier \(t) \(g.joined(separator: ","))"
        case .autoApproved(let r, let g): line = "auto \(r.id) grant \(g.id)"
        case .breakGlass(let r, let g, _): line = "break-glass \(r.id) grant \(g.id)"
        }
        log.withLock { $0.append(line) }
    }
    var entries: [String] { log.withLock { $0 } }
}

/// Records warnings and terminations instead of touching processes.
final class FakeSessions: SessionControl {
    let log = Mutex<[String]>([])
    func startTicks(pid: Int32) -> Int64 { Int64(pid) * 10 }
    func warn(_ s: Store.Session, message: String) { log.withLock { $0.append("warn \(s.id)") } }
    func terminate(_ s: Store.Session) { log.withLock { $0.append("terminate \(s.id) pid \(s.pid)") } }
    var entries: [String] { log.withLock { $0 } }
}

/// A temp folder removed at deinit.
final class TempDir {
    let path: String
    init() {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("jit-test-\(UUID().uuidString.prefix(8))")
        try! FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        path = base.path
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

struct Harness {
    let dir = TempDir()
    let clock = ManualClock()
    let effects = RecordingEffects()
    let sessions = FakeSessions()
    let notifier = RecordingNotifier()
    let engine: Engine

    init(_ edit: (inout Config) -> Void = { _ in }) throws {
        var c = Config()
        c.environment = "production"
        c.database = dir.file("db/jit.db")
        c.socket = dir.file("jitd.sock")
        edit(&c)
        engine = Engine(config: c, store: try Store(path: c.database), clock: clock, directory: FakeDirectory.standard, effects: effects, sessions: sessions, notifier: notifier)
    }

    func call(_ who: Identity, _ word: String, _ fields: [(String, String)] = []) -> Message {
        engine.handle(Message(word, fields), from: who)
    }

    /// Files a request as `who` and returns its ID.
    func file(_ who: Identity = FakeDirectory.alice, scope: String = "login", seconds: Int = 1800, commands: [String] = []) throws -> Int64 {
        var f: [(String, String)] = [("for", String(seconds)), ("reason", "test"), ("scope", scope)]
        for c in commands { f.append(("command", c)) }
        let r = call(who, "request", f)
        guard r.isOK, let id = r["id"].flatMap({ Int64($0) }) else { throw JITError(.internal, "file failed: \(r)") }
        return id
    }
}
