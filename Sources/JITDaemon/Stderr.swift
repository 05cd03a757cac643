#if canImport(Glibc)
import Glibc
#endif

enum FileHandleErr {
    static func write(_ s: String) {
        var bytes = Array(s.utf8)
        _ = Glibc.write(2, &bytes, bytes.count)
    }
}
