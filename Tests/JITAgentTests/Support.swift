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
    static let standard = FakeDirectory(users: [alice, bob, carol, dave, mallory, root])
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
    let engine: Engine

    init(_ edit: (inout Config) -> Void = { _ in }) throws {
        var c = Config()
        c.environment = "production"
        c.database = dir.file("db/jit.db")
        c.socket = dir.file("jitd.sock")
        edit(&c)
        engine = Engine(config: c, store: try Store(path: c.database), clock: clock, directory: FakeDirectory.standard, effects: effects, sessions: sessions)
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
