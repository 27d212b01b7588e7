// Answers with the C library Node runs on and a CRC-32 from a native module: on an
// Alpine image both only work if the musl build of the module was installed.
const http = require("node:http");
const { crc32 } = require("@node-rs/crc32");

const libc = process.report.getReport().header.glibcVersionRuntime ? "glibc" : "musl";
const port = Number(process.env.PORT || 8080);

http
  .createServer((req, res) => {
    res.end(`alpine-native ok on ${libc}, crc32 ${crc32("aether").toString(16)}\n`);
  })
  .listen(port);
