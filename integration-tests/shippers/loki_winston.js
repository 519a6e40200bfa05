// Ship log lines with winston-loki, the Loki transport of Node.js's most used logger: protobuf
// compressed with snappy (its default), or JSON with `--json`, the key sent as Basic auth.
//
// usage: node loki_winston.js URL KEY RUN COUNT [--json]
// Prints one JSON line per line sent ({"seq", "message", "level"}), then {"done": true}.
const winston = require('winston')
const LokiTransport = require('winston-loki')

const [url, key, run, countText, mode] = process.argv.slice(2)
const count = Number(countText)
const errors = []
const transport = new LokiTransport({
  host: url,
  basicAuth: `loki:${key}`,
  labels: { service_name: `loki-${run}`, host: 'shipper-host' },
  json: mode === '--json',
  batching: true,
  interval: 0.5,
  timeout: 30000,
  onConnectionError: err => errors.push(String(err)),
  // The line is the message, as an application's format would make it.
  format: winston.format.printf(({ message }) => message)
})
const log = winston.createLogger({ level: 'debug', transports: [transport] })
const LEVELS = [['debug', 'DEBUG'], ['info', 'INFO'], ['warn', 'WARN'], ['error', 'ERROR']]

async function main () {
  for (let seq = 0; seq < count; seq++) {
    const [level, name] = LEVELS[seq % LEVELS.length]
    const message = `loki ${seq} "quoted" back\\slash\ttab ünïcødé ✓ <b>&amp;</b> {brace}`
    log.log(level, message)
    console.log(JSON.stringify({ seq, message, level: name }))
  }
  await transport.flush()
  await transport.close()
  console.log(JSON.stringify({ done: errors.length === 0, errors }))
}

main().catch(err => {
  console.error(err)
  process.exit(1)
})
