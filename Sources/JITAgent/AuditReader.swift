import Foundation
import GRDB
public import JITCore

/// Reads a trail for the auditor, without jitd: the archives retention wrote (in order) and then the live
/// `audit` table, from the database file itself (read-only; a copy taken off the host works the same).
/// The verification key stays in the auditor's process and never reaches the agent.
public enum AuditReader {
    /// Feeds every event, oldest first, to `body` until it returns false. Returns the archives read.
    /// `archiveDir` finds archives by file name in another folder (a copy); otherwise their recorded paths.
    @discardableResult
    public static func walk(database: String, archiveDir: String?, _ body: (AuditEvent) -> Bool) throws(JITError) -> [String] {
        guard FileManager.default.isReadableFile(atPath: database) else {
            throw JITError(.notFound, "cannot read the database \(database): give the trail's database (or a copy of it) with --database, as root on the host")
        }
        var config = Configuration()
        config.readonly = true
        config.label = "jit-audit-reader"
        // The file may come from a host that was taken: its schema is not trusted to run anything.
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA trusted_schema = OFF") }
        let queue: DatabaseQueue
        do { queue = try DatabaseQueue(path: database, configuration: config) } catch {
            throw JITError(.internal, "cannot open the database \(database): \(error)")
        }
        do {
            return try queue.read { db -> [String] in
                guard try db.tableExists("audit") else {
                    throw JITError(.invalid, "\(database) has no audit table: it is not a jitd database")
                }
                var read: [String] = []
                var going = true
                for row in try Row.fetchAll(db, sql: "SELECT last_id, file FROM audit_anchor ORDER BY last_id") where going {
                    let recorded: String = row["file"]
                    let file = archiveDir.map { "\($0)/\((recorded as NSString).lastPathComponent)" } ?? recorded
                    let events: [AuditEvent]
                    do { events = try AuditArchive.events(path: file) } catch let error as JITError {
                        throw JITError(.notFound, "\(error.message); the trail through event \(row["last_id"] as Int64) is in it (give --archive-dir with the folder holding a copy)")
                    }
                    read.append(file)
                    for e in events where going { going = body(e) }
                }
                let cursor = try Row.fetchCursor(db, sql: "SELECT * FROM audit ORDER BY rowid")
                while going, let row = try cursor.next() { going = body(Store.event(row)) }
                return read
            }
        } catch let e as JITError {
            throw e
        } catch let e as DatabaseError {
            throw JITError(.internal, "the database \(database) could not be read (\(Store.explain(e)))")
        } catch {
            throw JITError(.internal, "the database \(database) could not be read (\(error))")
        }
    }
}
