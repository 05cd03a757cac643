#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#else
import Darwin
#endif

/// Thin wrappers over the system calls the sudoers code needs, so that the logic reads as decisions.
enum Posix {
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

    /// Runs `executable` with `arguments` (no shell, a fixed minimal environment, stdin from /dev/null) and
    /// returns its exit status and combined output. A child still running after `timeout` seconds is killed.
    /// A status of -1 means it could not be started, was killed or died on a signal; the output says which.
    static func run(
        _ executable: String, _ arguments: [String], timeout: Int = 30
    ) -> (status: Int32, output: String) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return (-1, "cannot create a pipe: \(describeErrno(errno))") }
        let (readFD, writeFD) = (fds[0], fds[1])
        _ = fcntl(readFD, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeFD, F_SETFD, FD_CLOEXEC)
        defer { close(readFD) }

        #if os(Linux)
        var actions = posix_spawn_file_actions_t()
        #else
        var actions: posix_spawn_file_actions_t? = nil
        #endif
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
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
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv + [nil], envp + [nil])
        close(writeFD)
        guard spawned == 0 else { return (-1, "cannot start \(executable): \(describeErrno(spawned))") }

        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var remainingMilliseconds = Int32(timeout * 1000)
        var timedOut = false
        while true {
            var pfd = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            var started = timespec()
            clock_gettime(CLOCK_MONOTONIC, &started)
            let ready = poll(&pfd, 1, remainingMilliseconds)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 {
                timedOut = true
                break
            }
            let count = buffer.withUnsafeMutableBytes { read(readFD, $0.baseAddress!, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            if output.count < 65_536 { output += buffer[0..<count] }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let elapsed = Int32((now.tv_sec - started.tv_sec) * 1000 + (now.tv_nsec - started.tv_nsec) / 1_000_000)
            remainingMilliseconds = max(0, remainingMilliseconds - elapsed)
        }
        if timedOut { kill(pid, SIGKILL) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { return (-1, "cannot wait for \(executable): \(describeErrno(errno))") }
        }
        let text = String(decoding: output, as: UTF8.self)
        if timedOut { return (-1, text + "(killed after \(timeout) s)") }
        // Exited normally: low 7 bits are zero and the code is in the next byte; else report -1.
        if (status & 0x7f) != 0 { return (-1, text + "(killed by signal \(status & 0x7f))") }
        return ((status >> 8) & 0xff, text)
    }
}
