import Foundation
import Testing
@testable import JITCore

@Suite struct LifeCycleTests {
    @Test func requestTransitionsAreExactlyTheAllowedOnes() throws {
        for from in RequestState.allCases {
            for to in RequestState.allCases {
                let allowed = from == .pending && to != .pending
                if allowed {
                    #expect(try from.transition(to: to) == to)
                } else {
                    #expect(throws: TransitionError.self, "\(from) → \(to) must be refused") { try from.transition(to: to) }
                }
            }
        }
    }

    @Test func grantTransitionsAreExactlyTheAllowedOnes() throws {
        for from in GrantState.allCases {
            for to in GrantState.allCases {
                if from == .active && to != .active {
                    #expect(try from.transition(to: to) == to)
                } else {
                    #expect(throws: TransitionError.self, "\(from) → \(to) must be refused") { try from.transition(to: to) }
                }
            }
        }
    }

    @Test func grantsCoverLoginAlwaysAndSudoOnlyWithASudoScope() {
        func g(_ s: Scope) -> Grant {
            Grant(requestID: 1, user: "a", uid: 1000, environment: "p", scope: s, runAs: "root", startsAt: Date(), expiresAt: Date())
        }
        #expect(g(.login).covers(service: "sshd"))
        #expect(!g(.login).covers(service: "sudo"))
        #expect(!g(.login).covers(service: "sudo-i"))
        #expect(g(.sudo).covers(service: "sudo"))
        #expect(g(.sudo).covers(service: "sshd"))
        #expect(g(.commands(["/usr/bin/id"])).covers(service: "sudo"))
    }

    @Test func scopeConstruction() throws {
        #expect(try Scope(name: "login", commands: []) == .login)
        #expect(throws: ValidationError.self) { try Scope(name: "login", commands: ["/bin/x"]) }
        #expect(throws: ValidationError.self) { try Scope(name: "sudo", commands: ["/bin/x"]) }
        #expect(throws: ValidationError.self) { try Scope(name: "commands", commands: []) }
        #expect(throws: ValidationError.self) { try Scope(name: "root", commands: []) }
    }
}

@Suite struct DurationTests {
    @Test(arguments: [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2h", 7200), ("1d", 86400), ("1h0m5s", 3605), (" 45m ", 2700)])
    func parses(text: String, seconds: Int64) throws {
        #expect(try Durations.parse(text) == seconds)
    }

    @Test(arguments: ["", "0", "0s", "0h0m", "-5m", "5", "1.5h", "1x", "h", "1h1h", "m30", "99999999999999h", "1w", "１h", "5m-"])
    func refuses(text: String) {
        #expect(throws: ValidationError.self, "\(text.debugDescription)") { try Durations.parse(text) }
    }

    @Test func formatsBack() throws {
        #expect(Durations.format(5400) == "1h30m")
        #expect(Durations.format(90) == "1m30s")
        #expect(Durations.format(86400 + 1) == "1d1s")
        for s: Int64 in [1, 59, 61, 3599, 3601, 86399, 90061] {
            #expect(try Durations.parse(Durations.format(s)) == s)
        }
    }

    @Test func timestampsAreRFC3339UTC() {
        let d = Date(timeIntervalSince1970: 1_795_000_000.9)
        let s = Timestamps.format(d)
        #expect(s == "2026-11-18T11:06:40Z")
        #expect(Timestamps.parse(s) == Date(timeIntervalSince1970: 1_795_000_000))
    }
}
