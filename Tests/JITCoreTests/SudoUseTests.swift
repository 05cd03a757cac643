import Testing
import JITCore

/// What a sudo use runs, as the agent reads the module's fields (#13 finding 2): resolution like sudo's,
/// "unsure" where it cannot be sure, and which grants admit it.
@Suite struct SudoUseTests {
    static let files: Set<String> = ["/usr/bin/id", "/usr/bin/systemctl", "/usr/local/bin/id", "/home/eve/bin/systemctl"]
    func exe(_ p: String) -> Bool { Self.files.contains(p) }
    func use(_ f: [(String, String)]) -> SudoUse { SudoUse.from(Message("check", f), isExecutable: exe) }

    @Test func absolutePathsAreTakenAsTheyAre() {
        #expect(SudoUse.resolve("/usr/bin/systemctl restart nginx", userPath: nil, isExecutable: exe) == .command("/usr/bin/systemctl restart nginx"))
        #expect(SudoUse.resolve("/usr/bin/../bin/id", userPath: nil, isExecutable: exe) != .command("/usr/bin/../bin/id"))
        #expect(SudoUse.resolve("./id", userPath: nil, isExecutable: exe) == .unsure("the command ./id is a relative path"))
    }

    @Test func aBareNameNeedsSecurePathAndThePathToAgree() {
        #expect(SudoUse.resolve("systemctl restart nginx", userPath: "/usr/bin:/bin", isExecutable: exe) == .command("/usr/bin/systemctl restart nginx"))
        // The caller's PATH puts their own systemctl first: sudo without secure_path would run that one.
        guard case .unsure = SudoUse.resolve("systemctl", userPath: "/home/eve/bin:/usr/bin", isExecutable: exe) else { Issue.record("accepted"); return }
        guard case .unsure = SudoUse.resolve("systemctl", userPath: nil, isExecutable: exe) else { Issue.record("accepted without PATH"); return }
        guard case .unsure = SudoUse.resolve("systemctl", userPath: "bin:/usr/bin", isExecutable: exe) else { Issue.record("relative PATH entry"); return }
        // "." and empty entries are skipped, as sudo's ignore_dot does.
        #expect(SudoUse.resolve("systemctl", userPath: ".::/usr/bin", isExecutable: exe) == .command("/usr/bin/systemctl"))
        // secure_path has /usr/local/bin before /usr/bin.
        #expect(SudoUse.resolve("id", userPath: "/usr/local/bin:/usr/bin", isExecutable: exe) == .command("/usr/local/bin/id"))
        guard case .unsure = SudoUse.resolve("id", userPath: "/usr/bin", isExecutable: exe) else { Issue.record("disagreeing paths"); return }
    }

    @Test func aFolderJitdCannotVouchForBeforeTheHitMakesItUnsure() {
        let trusted: (String) -> Bool = { !$0.hasPrefix("/home") }
        guard case .unsure = SudoUse.resolve("systemctl", userPath: "/home/eve/bin:/usr/bin", isExecutable: { $0 == "/usr/bin/systemctl" }, isTrustedDir: trusted) else {
            Issue.record("a home folder before the hit was trusted"); return
        }
        #expect(SudoUse.resolve("systemctl", userPath: "/usr/bin:/home/eve/bin", isExecutable: exe, isTrustedDir: trusted) == .command("/usr/bin/systemctl"))
    }

    @Test func sudosOwnCommandIsUsedWhenItMatchesTheArgv() {
        #expect(SudoUse.crossCheck(typed: "systemctl restart nginx", sudoCommand: "/usr/bin/systemctl restart nginx") == .command("/usr/bin/systemctl restart nginx"))
        #expect(SudoUse.crossCheck(typed: "/usr/bin/id -u", sudoCommand: "/usr/bin/id -u") == .command("/usr/bin/id -u"))
        for (typed, sc) in [("systemctl restart nginx", "/usr/bin/systemctl restart apache2"), ("id", "/usr/bin/systemctl"),
                            ("/bin/id", "/usr/bin/id"), ("id", "id"), ("id", "/usr/bin/../bin/id")] {
            guard case .unsure = SudoUse.crossCheck(typed: typed, sudoCommand: sc) else { Issue.record("accepted \(typed) / \(sc)"); continue }
        }
        // The module's fields: sudo_command wins over PATH resolution.
        let u = use([("sudo_mode", "run"), ("runas", "root"), ("command", "id -u"), ("sudo_command", "/usr/local/bin/id -u"), ("path", "/usr/bin")])
        #expect(u.what == .command("/usr/local/bin/id -u"))
    }

    @Test func fieldsFromTheModule() {
        let u = use([("sudo_mode", "run"), ("runas", "root"), ("command", "/usr/bin/id -u")])
        #expect(u == SudoUse(what: .command("/usr/bin/id -u"), runAs: "root"))
        #expect(use([("sudo_mode", "none")]).what == .nothing)
        #expect(use([("sudo_mode", "unsure"), ("unsure", "sudo -s (shell)"), ("runas", "root")]) == SudoUse(what: .unsure("sudo -s (shell)"), runAs: "root"))
        // An older module, or a program that is not sudo: never guessed.
        guard case .unsure = use([("command", "/usr/bin/id")]).what else { Issue.record("guessed"); return }
    }

    @Test func whichGrantsAdmitAUse() {
        let nginx = Scope.commands(["/usr/bin/systemctl restart nginx"])
        let byUID: (String) -> String? = { $0 == "#0" ? "root" : nil }
        let known = SudoUse(what: .command("/usr/bin/systemctl restart nginx"), runAs: "root")
        #expect(known.admitted(by: nginx, runAs: "root", runAsName: byUID))
        #expect(!known.admitted(by: nginx, runAs: "postgres", runAsName: byUID))
        #expect(!known.admitted(by: .login, runAs: "root", runAsName: byUID))
        #expect(known.admitted(by: .sudo, runAs: "root", runAsName: byUID))
        let shell = SudoUse(what: .unsure("sudo -s (shell)"), runAs: "root")
        #expect(!shell.admitted(by: nginx, runAs: "root", runAsName: byUID))
        #expect(shell.admitted(by: .sudo, runAs: "root", runAsName: byUID))
        #expect(!SudoUse(what: .unsure("?"), runAs: nil).admitted(by: .sudo, runAs: "root", runAsName: byUID))
        #expect(SudoUse(what: .command("/usr/bin/id"), runAs: "#0").admitted(by: .sudo, runAs: "root", runAsName: byUID))
        #expect(!SudoUse(what: .command("/bin/sh -c id"), runAs: "root").admitted(by: nginx, runAs: "root", runAsName: byUID))
        #expect(SudoUse(what: .nothing, runAs: nil).admitted(by: nginx, runAs: "root", runAsName: byUID))
        #expect(shell.commandForTrail == "(not known: sudo -s (shell))")
    }
}
