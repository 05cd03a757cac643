#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// Reads the I/O logs sudo wrote for a recorded grant, through sudo's own `sudoreplay` (no shell, fixed
/// environment, bounded time and output).
public enum SudoReplay {
    /// One recorded sudo session.
    public struct Session: Sendable, Equatable {
        /// sudo's session ID (`TSID=`), e.g. `000001`.
        public var tsid: String
        public var when: String
        public var user: String
        public var runAs: String
        public var command: String
        public var cwd: String
    }

    public static let sudoreplay = "/usr/bin/sudoreplay"

    /// A TSID as sudo writes it with the default `iolog_file` (`%{seq}`: six base-36 digits) or a path
    /// below the log folder: letters, digits and `/`, no `..`.
    public static func validTSID(_ t: String) -> Bool {
        !t.isEmpty && t.utf8.count <= 64 && !t.hasPrefix("/") && !t.contains("..")
            && t.unicodeScalars.allSatisfy { ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains(Character($0)))) || $0 == "/" }
    }

    /// The sessions recorded in `dir` (`sudoreplay -d DIR -l`); none when the folder does not exist yet.
    public static func list(dir: String) throws(SudoersError) -> [Session] {
        var st = stat()
        guard lstat(dir, &st) == 0 else { return [] }
        guard (st.st_mode & Posix.fileTypeMask) == Posix.directory else {
            throw SudoersError(.unsafeDirectory, "the I/O log folder \(dir) is not a folder")
        }
        let r = Posix.run(sudoreplay, ["-d", dir, "-l"], timeout: 10)
        guard r.status == 0 else { throw SudoersError(.io, "sudoreplay -l in \(dir) failed: \(r.output.prefix(300))") }
        // A session's command may hold a line break that looks like another session's line; the real line of
        // each TSID comes first, so later ones are dropped.
        var seen = Set<String>()
        return r.output.split(separator: "\n").compactMap { parse(String($0)) }.filter { seen.insert($0.tsid).inserted }
    }

    /// Parses one `sudoreplay -l` line: `DATE : USER : HOST=h ; TTY=t ; CWD=c ; USER=r ; TSID=id ; COMMAND=...`.
    static func parse(_ line: String) -> Session? {
        let parts = line.components(separatedBy: " : ")
        guard parts.count >= 3 else { return nil }
        let rest = parts.dropFirst(2).joined(separator: " : ")
        var fields: [String: String] = [:]
        let items = rest.components(separatedBy: " ; ")
        for (i, item) in items.enumerated() {
            if item.hasPrefix("COMMAND=") {
                // The command is last and may itself contain " ; ".
                fields["COMMAND"] = String(items[i...].joined(separator: " ; ").dropFirst("COMMAND=".count))
                break
            }
            if let eq = item.firstIndex(of: "=") { fields[String(item[..<eq])] = String(item[item.index(after: eq)...]) }
        }
        guard let tsid = fields["TSID"], validTSID(tsid) else { return nil }
        return Session(tsid: tsid, when: parts[0], user: parts[1], runAs: fields["USER"] ?? "", command: fields["COMMAND"] ?? "",
                       cwd: fields["CWD"] ?? "")
    }

    /// What session `tsid` printed (and, when recorded, what was typed), as sudoreplay plays it back
    /// without pauses; at most 64 KiB.
    public static func replay(dir: String, tsid: String) throws(SudoersError) -> String {
        guard validTSID(tsid) else { throw SudoersError(.invalidCommand, "'\(tsid)' is not a session ID; list them with jit replay GRANT") }
        let r = Posix.run(sudoreplay, ["-d", dir, "-m", "0", "-s", "1000", tsid], timeout: 20)
        guard r.status == 0 else { throw SudoersError(.io, "sudoreplay of session \(tsid) in \(dir) failed: \(r.output.prefix(300))") }
        return r.output
    }
}
