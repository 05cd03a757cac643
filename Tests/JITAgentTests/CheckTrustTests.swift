import Foundation
import Testing
import JITCore
@testable import JITAgent

/// Issue 13, part A, in process: who may say what on the check path.
@Suite struct CheckTrustTests {
    static let vpnAuto = """
        environment: production
        pending_ttl: 1h
        rules:
          - name: restart-nginx
            requesters: {groups: [jit-requesters]}
            scopes: [commands]
            commands: ["/usr/bin/systemctl restart nginx"]
            max_duration: 15m
            approvals: auto
          - name: vpn-sudo
            requesters: {groups: [jit-requesters]}
            scopes: [sudo]
            max_duration: 1h
            approvals: auto
            when: {sources: [10.0.0.0/8]}
          - name: ops
            requesters: {groups: [jit-requesters]}
            scopes: [login]
            approvals:
              groups: [jit-approvers]
        """

    @Test func aUsersOwnCheckIsRefusedWhateverItCarriesAndRecordedUnderTheirName() throws {
        let h = try Harness(yaml: Self.vpnAuto)
        for extra in [[("rhost", "10.9.9.9"), ("file", "1")], [], [("tty", "/dev/pts/1")], [("pid", "4242")], [("command", "/bin/sh")]] {
            let r = h.call(D.alice, "check", [("user", "alice"), ("service", "sudo")] + extra)
            #expect(r["code"] == "unauthorized", "\(r)")
        }
        #expect(try h.engine.store.activeGrants().isEmpty)
        #expect(try h.engine.store.requests(user: nil, pendingOnly: false).isEmpty)
        let evs = try h.engine.store.events(Store.AuditQuery())
        #expect(evs.count == 5 && evs.allSatisfy { $0.kind == "check.refused" && $0.actor == "alice" })
        #expect(!evs.contains { $0.pairs.contains { $0.1.contains("10.9.9.9") } }, "values a user claims are not copied into the trail")
        // The module (root) with the real address: the rule applies.
        let ok = h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("rhost", "10.1.2.3"), ("file", "1")])
        #expect(ok["decision"] == "allow")
        #expect(try h.engine.store.events(Store.AuditQuery()).last?.actor == "pam")
    }

    @Test func everyModuleContextFieldIsAcceptedOnlyWithCheckFromRoot() {
        // A field added to FieldRules.moduleContext is part of 'check' and root-only with it.
        for k in FieldRules.moduleContext { #expect(Engine.checkKeys.contains(k)) }
    }

    @Test func aCommandGrantDoesNotOpenLoginAndALoginAttemptDoesNotJoinItsRequest() throws {
        let h = try Harness(yaml: Self.vpnAuto)
        let r = h.call(D.alice, "request", [("for", "600"), ("reason", "x"), ("scope", "commands"), ("command", "/usr/bin/systemctl restart nginx")])
        #expect(r["state"] == "approved")
        #expect(try h.engine.store.activeGrants().first?.coversLogin == false)
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "run"), ("runas", "root"),
                                         ("command", "/usr/bin/systemctl restart nginx")])["decision"] == "allow")
        let login = h.call(D.root, "check", [("user", "alice"), ("service", "sshd"), ("file", "1")])
        #expect(login["decision"] == "pending", "\(login)")
        let pending = try #require(try h.engine.store.request(id: Int64(login["request"] ?? "") ?? 0))
        #expect(pending.scope == .login && pending.rule == "ops")
        // A session opened now is not bound to the command grant.
        let s = h.call(D.root, "session_open", [("user", "alice"), ("service", "sshd"), ("pid", "4321")])
        #expect(s["grant"] == "0")
    }

    @Test func theDefaultPolicysSudoGrantStillOpensLogin() throws {
        let h = try Harness()
        let id = try h.file(scope: "sudo")
        _ = h.call(D.bob, "approve", [("id", String(id))])
        #expect(try h.engine.store.activeGrants().first?.coversLogin == true)
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["decision"] == "allow")
    }

    @Test(arguments: [
        ("rhost", "10.0.0.1\u{1b}]0;x\u{07}"), ("tty", "pts/1\u{200e}"), ("command", "/usr/bin/id \u{202e}"), ("pid", "12x"),
        ("pid", "99999999"), ("service", "sshd service"), ("user", "al ice"), ("reason", "a\u{061c}b"),
        ("command", "/usr/bin/true " + String(repeating: "x", count: 600)), ("rhost", String(repeating: "a", count: 300)),
    ])
    func badFieldsAreRefusedBeforeAnyOperationSeesThem(field: String, value: String) throws {
        let h = try Harness()
        let r = h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), (field, value)].filter { $0.0 != field || $0.1 == value })
        #expect(r["code"] == "bad-request" && r["message"]?.contains("'\(field)'") == true, "\(r)")
        #expect(try h.engine.store.events(Store.AuditQuery()).isEmpty)
        // The same table bounds every operation, not only check.
        let q = h.call(D.alice, "request", [("for", "60"), ("reason", "a\u{200b}b")])
        #expect(q["code"] == "bad-request")
    }

    @Test(.enabled(if: getuid() == 0, "needs root to give a folder to another uid; tests/e2e covers it too"))
    func commandGrantsInFoldersTheUserCanWriteAreRefused() throws {
        let h = try Harness()
        let dir = h.dir.file("bin")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // The harness's alice is uid 2001: give her the folder.
        chown(dir, 2001, 0)
        let r = h.call(D.alice, "request", [("for", "60"), ("reason", "x"), ("scope", "commands"), ("command", dir + "/tool --flag")])
        #expect(r["code"] == "invalid" && r["message"]?.contains("can write \(dir)") == true, "\(r)")
        #expect(try h.engine.store.requests(user: nil, pendingOnly: false).isEmpty)
        let ok = h.call(D.alice, "request", [("for", "60"), ("reason", "x"), ("scope", "commands"), ("command", "/usr/bin/id")])
        #expect(ok.isOK, "\(ok)")
    }

    @Test func theDatabaseFolderIsClosedAndAFolderOthersCanWriteIsRefused() throws {
        let dir = TempDir()
        let folder = dir.file("db")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        chmod(folder, 0o755)
        _ = try Store(path: folder + "/jit.db")
        var st = stat()
        stat(folder, &st)
        #expect(st.st_mode & 0o777 == 0o700)
        for f in ["jit.db", "jit.db-wal", "jit.db-shm"] where stat(folder + "/" + f, &st) == 0 {
            #expect(st.st_mode & 0o777 == 0o600, "\(f)")
        }
        // A shared folder that holds other files is never changed: refused.
        let shared = dir.file("shared")
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: shared + "/someone-elses", contents: Data())
        chmod(shared, 0o755)
        #expect(throws: JITError.self) { try Store(path: shared + "/jit.db") }
        stat(shared, &st)
        #expect(st.st_mode & 0o777 == 0o755)
        chmod(folder, 0o775)
        do {
            _ = try Store(path: folder + "/jit.db")
            Issue.record("opened a database in a group-writable folder")
        } catch {
            #expect(error.message.contains(folder) && error.message.contains("chmod 700 \(folder)"))
        }
    }
}
