public import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// What `jitd check-config` (and the agent at start and reload) says about a valid policy: a summary, and
/// warnings that do not stop it (groups this host does not know: they may come from LDAP later).
public enum PolicyReport {
    public static func summary(_ c: Config, file: String) -> String {
        let n = c.notify.channels
        guard !n.isEmpty else { return policySummary(c, file: file) }
        // Endpoints only (host:port): a URL's path may hold a token.
        let channels = n.map { ch in
            switch (ch.kind, ch.transport) {
            case (.email, .sendmail): return "\(ch.name) (email via \(ch.sendmail))"
            case (.email, .smtp):
                let tls = ch.smtpSecurity == .starttls ? "STARTTLS" : ch.smtpSecurity == .implicit ? "TLS" : "no TLS"
                return "\(ch.name) (email via \(ch.smtpHost):\(ch.smtpPort), \(tls))"
            default: return "\(ch.name) (\(ch.kind.rawValue) to \(ch.url.map { ($0.tls ? "https " : "http ") + $0.endpoint } ?? "?"))"
            }
        }
        return policySummary(c, file: file) + "\n  notify: " + channels.joined(separator: ", ")
    }

    static func policySummary(_ c: Config, file: String) -> String {
        let p = c.policy
        if p.rules.isEmpty && p.breakGlass == nil {
            return "\(file): OK (environment \(c.environment), \(p.requesterGroups.joined(separator: ",")) may request up to \(Durations.format(p.maxDuration)), \(p.approvalsRequired) approval(s) from \(p.approverGroups.joined(separator: ",")))"
        }
        var lines = ["\(file): OK (environment \(c.environment)\(c.labels.isEmpty ? "" : ", labels \(c.labels.joined(separator: ","))"), \(p.effectiveRules.count) rule(s), tried in order)"]
        for r in p.effectiveRules {
            lines.append("  \(r.label): \(r.requesters.summary); \(r.scopes.sorted().joined(separator: ",")) up to \(Durations.format(r.maxDuration)); \(r.approvalSummary)" + (r.conditions.isEmpty ? "" : "; when \(r.conditions.summary)"))
        }
        if let b = p.breakGlass { lines.append("  break-glass: \(b.groups.joined(separator: ",")) up to \(Durations.format(b.maxDuration))") }
        return lines.joined(separator: "\n")
    }

    public static func warnings(_ c: Config, file: String, directory: any UserDirectory) -> [String] {
        var seen = Set<String>()
        var out: [String] = []
        for ref in c.groupReferences where !directory.groupExists(ref.group) {
            let key = "\(ref.field)/\(ref.group)"
            guard seen.insert(key).inserted else { continue }
            let at = ref.line.map { "\(file):\($0)" } ?? file
            out.append("warning: \(at): \(ref.field): the group '\(ref.group)' is not known on this host (it may come from LDAP later)")
        }
        for ch in c.notify.channels where ch.kind == .email && ch.transport == .smtp && ch.smtpSecurity == .none && !Loopback.isHost(ch.smtpHost) {
            let at = ch.line.map { "\(file):\($0)" } ?? file
            out.append("warning: \(at): notify.email[\(ch.name)]: starttls: never sends mail in clear text over the network to \(ch.smtpHost); use 'starttls: required', or 'transport: sendmail' and let the MTA relay")
        }
        for ch in c.notify.channels where ch.kind == .email && ch.transport == .sendmail && access(ch.sendmail, X_OK) != 0 {
            let at = ch.line.map { "\(file):\($0)" } ?? file
            out.append("warning: \(at): notify.email[\(ch.name)]: \(ch.sendmail) is missing or not executable: mail waits in the outbox until an MTA is installed (e.g. apt install msmtp-mta, or postfix)")
        }
        return out
    }
}
