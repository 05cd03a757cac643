#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#else
import Darwin
#endif

/// Thin wrappers over the system calls the sudoers code needs, so that the logic reads as decisions.
public enum Posix {
    static let fileTypeMask: mode_t = 0o170000
    static let regularFile: mode_t = 0o100000
    static let directory: mode_t = 0o040000
    static let symbolicLink: mode_t = 0o120000

    static func describeErrno(_ code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// `lstat` relative to a directory descriptor; nil when the name does not exist.
    static func lstatAt(_ dirFD: Int32, _ name: String) -> stat? {
        var info = stat()
        guard fstatat(dirFD, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        return info
    }

    /// Writes all of `bytes`, retrying short writes and EINTR; returns 0 or the errno.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Int32 {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer in
                write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                return errno
            }
            offset += written
        }
        return 0
    }

    /// Reads at most `limit` bytes until end of file; nil on error or when the file is larger than `limit`.
    static func readAll(_ fd: Int32, limit: Int) -> [UInt8]? {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if count == 0 { return result }
            result += chunk[0..<count]
            if result.count > limit { return nil }
        }
    }

    /// Names in the directory open at `dirFD` (without `.` and `..`); nil on error.
    static func listDirectory(_ dirFD: Int32) -> [String]? {
        let copy = dup(dirFD)
        guard copy >= 0 else { return nil }
        guard let stream = fdopendir(copy) else {
            close(copy)
            return nil
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Runs `executable` with `arguments` (no shell, a fixed minimal environment) with `input` on its stdin
    /// (empty: /dev/null) and returns its exit status and combined output (at most 64 KiB kept). A child still
    /// running after `timeout` seconds is killed (SIGKILL). A status of -1 means it could not be started, was
    /// killed or died on a signal; the output says which. visudo and sendmail are run this way.
    public static func run(
        _ executable: String, _ arguments: [String], input: [UInt8] = [], timeout: Int = 30
    ) -> (status: Int32, output: String) {
        var outFDs: [Int32] = [-1, -1]
        var inFDs: [Int32] = [-1, -1]
        guard pipe(&outFDs) == 0 else { return (-1, "cannot create a pipe: \(describeErrno(errno))") }
        let (readFD, writeFD) = (outFDs[0], outFDs[1])
        defer { close(readFD) }
        if !input.isEmpty {
            guard pipe(&inFDs) == 0 else {
                close(writeFD)
                return (-1, "cannot create a pipe: \(describeErrno(errno))")
            }
        }
        for fd in outFDs + inFDs where fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // Our end of stdin: non-blocking, so a child that stops reading cannot hold us past the deadline.
        if inFDs[1] >= 0 { _ = fcntl(inFDs[1], F_SETFL, fcntl(inFDs[1], F_GETFL) | O_NONBLOCK) }

        #if os(Linux)
        var actions = posix_spawn_file_actions_t()
        #else
        var actions: posix_spawn_file_actions_t? = nil
        #endif
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if inFDs[0] >= 0 {
            posix_spawn_file_actions_adddup2(&actions, inFDs[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, writeFD, 1)
        posix_spawn_file_actions_adddup2(&actions, writeFD, 2)

        let environment: [String] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"]
        let argv = ([executable] + arguments).map { (text: String) in strdup(text) }
        let envp = environment.map { (text: String) in strdup(text) }
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        var spawned = posix_spawn(&pid, executable, &actions, nil, argv + [nil], envp + [nil])
        // ETXTBSY: the program is open for writing somewhere, e.g. a file descriptor that another thread's child
        // inherited for a moment while the program was being written. Bounded retries (at most 0.5 s).
        var busyRetries = 0
        while spawned == ETXTBSY && busyRetries < 20 {
            busyRetries += 1
            usleep(25_000)
            spawned = posix_spawn(&pid, executable, &actions, nil, argv + [nil], envp + [nil])
        }
        close(writeFD)
        if inFDs[0] >= 0 { close(inFDs[0]) }
        var stdinFD = inFDs[1]
        defer { if stdinFD >= 0 { close(stdinFD) } }
        guard spawned == 0 else { return (-1, "cannot start \(executable): \(describeErrno(spawned))") }

        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        deadline.tv_sec += timeout
        func remainingMilliseconds() -> Int32 {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            return Int32(max(0, (deadline.tv_sec - now.tv_sec) * 1000 + (deadline.tv_nsec - now.tv_nsec) / 1_000_000))
        }

        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var written = 0
        var timedOut = false
        var outputOpen = true
        while outputOpen || stdinFD >= 0 {
            var pfds = [pollfd(fd: outputOpen ? readFD : -1, events: Int16(POLLIN), revents: 0),
                        pollfd(fd: stdinFD, events: Int16(POLLOUT), revents: 0)]
            let ready = poll(&pfds, 2, remainingMilliseconds())
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 {
                timedOut = true
                break
            }
            if pfds[1].revents != 0 {
                let count = input.withUnsafeBytes { write(stdinFD, $0.baseAddress! + written, $0.count - written) }
                if count > 0 { written += count }
                if (count < 0 && errno != EINTR && errno != EAGAIN) || written == input.count {
                    close(stdinFD)  // done, or the child closed its stdin (EPIPE): its status says why
                    stdinFD = -1
                }
            }
            if pfds[0].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(readFD, $0.baseAddress!, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 {
                    outputOpen = false
                } else if output.count < 65_536 {
                    output += buffer[0..<count]
                }
            }
        }
        var status: Int32 = 0
        // The output closed: the child is ending (or hands its work to a daemon); wait, still bounded.
        while !timedOut {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0 && errno != EINTR { return (-1, "cannot wait for \(executable): \(describeErrno(errno))") }
            if remainingMilliseconds() == 0 { timedOut = true } else { usleep(2_000) }
        }
        if timedOut {
            kill(pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        let text = String(decoding: output, as: UTF8.self)
        if timedOut { return (-1, text + "(killed after \(timeout) s)") }
        // Exited normally: low 7 bits are zero and the code is in the next byte; else report -1.
        if (status & 0x7f) != 0 { return (-1, text + "(killed by signal \(status & 0x7f))") }
        return ((status >> 8) & 0xff, text)
    }
}
