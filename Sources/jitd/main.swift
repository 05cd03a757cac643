import JITDaemon

await Jitd.runMain()
