// aws-lambda-stream 1.0.0 running the pipelines of our reference functions, for the side-by-side
// benchmark against the Rust listener and trigger.
//
//   node bench.cjs <listener|trigger> <stubbed|sdk> <event.json> [runs=7]
//
// listener: fromKinesis -> materialize rules (thing-created/-updated, thing-deleted) -> toPromise
// trigger:  fromDynamodb -> a cdc rule publishing each stored event to the bus -> toPromise
// Both assembled as a handler does on every invocation: initialize(initializeFrom(RULES),
// defaultOptions).assemble(from*(event)).through(toPromise).
//
// Modes:
//   stubbed  the connectors' AWS calls (DynamoDBConnector.update, EventBridgeConnector.putEvents)
//            replaced by functions that resolve at once with a success shaped like the SDK's, as
//            the peer's own unit tests stub them: no SDK request code runs
//   sdk      the peer's real SDK v3 clients, as its connectors construct them, all their
//            middleware (serialize, endpoint, retry, SigV4 signing, deserialize) running; only
//            the socket is replaced: the NodeHttpHandler they are given answers every request
//            in memory with HTTP 200 and the operation's success body
//
// One warm-up run, then `runs` measured runs, each on a freshly parsed event (as Lambda hands a
// handler a new object). Prints one JSON line; `calls` counts the stub calls or the HTTP
// requests answered in one run.
'use strict';

const fs = require('fs');
const path = require('path');
const { Readable } = require('stream');

const PEER = 'aws-lambda-stream@1.0.0';
const FUNCTIONS = ['listener', 'trigger'];
const MODES = ['stubbed', 'sdk'];

const fail = (message, code = 2) => {
  process.stderr.write(`bench.cjs: ${message}\n`);
  process.exit(code);
};

const [fn, mode, file, runsArg = '7'] = process.argv.slice(2);
const RUNS = Number(runsArg);
if (!FUNCTIONS.includes(fn) || !MODES.includes(mode) || !file || !Number.isInteger(RUNS) || RUNS < 1) {
  fail('usage: node bench.cjs <listener|trigger> <stubbed|sdk> <event.json> [runs=7]');
}

// ---------------------------------------------------------------------------------------------
// the installed peer: bench/peer/node_modules only (npm ci from package-lock.json)
const installed = path.join(__dirname, 'node_modules', 'aws-lambda-stream', 'package.json');
if (!fs.existsSync(installed)) {
  fail(`${path.join(__dirname, 'node_modules')} is missing: run \`npm ci --no-audit --no-fund\` in ${__dirname}`);
}
const peerVersion = JSON.parse(fs.readFileSync(installed, 'utf8')).version;
if (`aws-lambda-stream@${peerVersion}` !== PEER) {
  fail(`node_modules holds aws-lambda-stream@${peerVersion}, not ${PEER}: run \`npm ci --no-audit --no-fund\` in ${__dirname}`);
}

// ---------------------------------------------------------------------------------------------
// environment, before the peer and the SDK are loaded (both read it at load time): a fixed region
// and static credentials so nothing is looked up, no shared config files, no endpoint overrides,
// no debug output.
Object.assign(process.env, {
  AWS_REGION: 'us-east-1',
  AWS_ACCESS_KEY_ID: 'AKIDBENCHMARK0000000',
  AWS_SECRET_ACCESS_KEY: 'benchmark-secret-access-key-not-a-real-one',
  AWS_CONFIG_FILE: path.join(__dirname, '.no-aws-config'),
  AWS_SHARED_CREDENTIALS_FILE: path.join(__dirname, '.no-aws-credentials'),
  AWS_EC2_METADATA_DISABLED: 'true',
  AWS_USE_FIPS_ENDPOINT: 'false',
  AWS_USE_DUALSTACK_ENDPOINT: 'false',
  AWS_LAMBDA_FUNCTION_NAME: `bench-${fn}`,
  ENTITY_TABLE_NAME: 'views',
  BUS_NAME: 'bench-bus',
});
[
  'DEBUG', 'NODE_ENV', 'AWS_PROFILE', 'AWS_DEFAULT_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_DEFAULT_REGION',
  'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_DYNAMODB', 'AWS_ENDPOINT_URL_EVENTBRIDGE', 'AWS_ENDPOINT_URL_S3',
  'AWS_LAMBDA_LOG_GROUP_NAME', '_X_AMZN_TRACE_ID', 'PROJECT', 'SERVERLESS_PROJECT',
].forEach((name) => { delete process.env[name]; });

// silence console output from the peer and the SDK; results go straight to stdout
['log', 'info', 'warn', 'error', 'debug', 'trace'].forEach((m) => { console[m] = () => {}; });

const {
  initialize, initializeFrom, defaultOptions, fromKinesis, fromDynamodb, toPromise,
  materialize, cdc, updateExpression, ttl, DynamoDBConnector, EventBridgeConnector,
} = require('aws-lambda-stream');

// ---------------------------------------------------------------------------------------------
// what one run did
let counts;
const reset = () => { counts = { calls: 0, ops: {}, entries: 0, faults: 0, unsigned: 0 }; };
const count = (op) => {
  counts.calls += 1;
  counts.ops[op] = (counts.ops[op] || 0) + 1;
};
// BENCH_SHOW_REQUESTS=1: the first request of each operation to stderr, to see what was sent
const shown = new Set();
const show = (op, request) => {
  if (!process.env.BENCH_SHOW_REQUESTS || shown.has(op)) return;
  shown.add(op);
  process.stderr.write(`${op}: ${typeof request === 'string' ? request : JSON.stringify(request)}\n`);
};
reset();

if (mode === 'stubbed') {
  const $metadata = () => ({ httpStatusCode: 200, requestId: 'stub', attempts: 1, totalRetryDelay: 0 });
  DynamoDBConnector.prototype.update = function update(params) {
    count('UpdateItem');
    show('UpdateItem', params);
    return Promise.resolve({ $metadata: $metadata() }); // UpdateCommand's output, no Attributes
  };
  DynamoDBConnector.prototype.put = function put(params) {
    count('PutItem');
    show('PutItem', params);
    return Promise.resolve({ $metadata: $metadata() });
  };
  EventBridgeConnector.prototype.putEvents = function putEvents(params) {
    count('PutEvents');
    show('PutEvents', params);
    counts.entries += params.Entries.length;
    counts.faults += params.Entries.filter((e) => e.DetailType === 'fault').length;
    return Promise.resolve({
      $metadata: $metadata(),
      FailedEntryCount: 0,
      Entries: params.Entries.map((_, i) => ({ EventId: `stub-${counts.calls}-${i}` })),
    });
  };
  // the pipelines make none of these: make one visible (a fault) rather than reach for a network
  ['query', 'queryAll', 'queryPage', 'batchGet', 'scan'].forEach((name) => {
    DynamoDBConnector.prototype[name] = function unexpected() {
      count(`unexpected:${name}`);
      return Promise.reject(new Error(`stubbed mode: unexpected DynamoDBConnector.${name}`));
    };
  });
} else {
  // The connectors pass `new NodeHttpHandler({...})` (the @smithy/node-http-handler that
  // aws-lambda-stream itself resolves, 2.x) to their clients as `requestHandler`: its handle()
  // is the one place a request leaves the SDK, so that is what is answered here.
  const peerDir = path.dirname(require.resolve('aws-lambda-stream'));
  // eslint-disable-next-line import/no-dynamic-require
  const { NodeHttpHandler } = require(require.resolve('@smithy/node-http-handler', { paths: [peerDir] }));
  const occurrences = (text, needle) => {
    let n = 0;
    for (let i = text.indexOf(needle); i !== -1; i = text.indexOf(needle, i + needle.length)) n += 1;
    return n;
  };
  NodeHttpHandler.prototype.handle = async function handle(request) {
    const target = request.headers['x-amz-target'] || '';
    const op = target.slice(target.indexOf('.') + 1) || `${request.method} ${request.path}`;
    count(op);
    show(op, { headers: request.headers, body: String(request.body) });
    if (!request.headers.authorization) counts.unsigned += 1;
    const requestId = `bench-${counts.calls}`;
    let json = '{}';
    if (op === 'PutEvents') {
      // entries counted without parsing: in the JSON body, a key outside a string is unescaped
      const body = typeof request.body === 'string' ? request.body : Buffer.from(request.body).toString('utf8');
      const n = occurrences(body, '"DetailType":');
      counts.entries += n;
      counts.faults += occurrences(body, '"DetailType":"fault"');
      json = JSON.stringify({
        FailedEntryCount: 0,
        Entries: Array.from({ length: n }, (_, i) => ({ EventId: `${requestId}-${i}` })),
      });
    }
    const body = Buffer.from(json);
    return {
      response: {
        statusCode: 200,
        reason: 'OK',
        headers: {
          'content-type': request.headers['content-type'] || 'application/x-amz-json-1.0',
          'content-length': String(body.length),
          'x-amzn-requestid': requestId,
        },
        body: Readable.from([body]), // a stream, as an IncomingMessage is: the SDK's collector reads it
      },
    };
  };
}

// ---------------------------------------------------------------------------------------------
// the listener's rules: a thing's row replaced by its state at the event's version
const VERSION_CONDITION = { ConditionExpression: 'attribute_not_exists(#version) OR #version < :version' };
const DELETED_TTL_DAYS = 30;
const modifiedBy = (uow) => (uow.event.tags && (uow.event.tags.functionname || uow.event.tags.source)) || 'unknown';

// (materialize calls toUpdateRequest(uow, rule): the extra fields are a separate argument)
const toRow = (uow, extra) => {
  const { id, ...thing } = uow.event.thing;
  return {
    Key: { pk: id, sk: 'thing' },
    ...updateExpression({
      ...thing,
      discriminator: 'thing',
      version: uow.event.version,
      timestamp: uow.event.timestamp,
      lastModifiedBy: modifiedBy(uow),
      ...extra,
    }),
    ...VERSION_CONDITION,
  };
};
const toUpdateRequest = (uow) => toRow(uow, {});
const toDeletedUpdateRequest = (uow) => toRow(uow, {
  deleted: true,
  ttl: ttl(uow.event.timestamp, DELETED_TTL_DAYS),
});

const LISTENER_RULES = [
  {
    id: 'thing-view',
    flavor: materialize,
    eventType: ['thing-created', 'thing-updated'],
    toUpdateRequest,
  },
  {
    id: 'thing-deleted',
    flavor: materialize,
    eventType: 'thing-deleted',
    toUpdateRequest: toDeletedUpdateRequest,
  },
];

// the trigger's rule: an INSERT of the events table publishes the stored event, as stored (the
// change event's own fields are all overridden by it, and its `raw` dropped)
const TRIGGER_RULES = [
  {
    id: 'publish-events',
    flavor: cdc,
    eventType: 'event-created',
    toEvent: (uow) => ({ ...uow.event.raw.new.event, raw: undefined }),
  },
];

const handlers = {
  listener: (event) => initialize(initializeFrom(LISTENER_RULES), { ...defaultOptions })
    .assemble(fromKinesis(event))
    .through(toPromise),
  trigger: (event) => initialize(initializeFrom(TRIGGER_RULES), { ...defaultOptions })
    .assemble(fromDynamodb(event))
    .through(toPromise),
};

// ---------------------------------------------------------------------------------------------
const ms = (from, to) => Number(to - from) / 1e6;
const round = (x, digits = 2) => Number(x.toFixed(digits));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const main = async () => {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    fail(`cannot read ${file}: ${err.message}`);
  }
  const records = JSON.parse(text).Records.length;
  const handler = handlers[fn];

  const runOnce = async () => {
    reset();
    const t0 = process.hrtime.bigint();
    const event = JSON.parse(text);
    const t1 = process.hrtime.bigint();
    const result = await handler(event);
    const t2 = process.hrtime.bigint();
    if (result !== 'Success') throw new Error(`handler resolved ${JSON.stringify(result)}`);
    return { parse: ms(t0, t1), handler: ms(t1, t2), counts };
  };

  await runOnce(); // warm-up
  const measured = [];
  for (let i = 0; i < RUNS; i += 1) measured.push(await runOnce()); // eslint-disable-line no-await-in-loop

  const times = measured.map((r) => r.handler);
  const per = measured.map((r) => JSON.stringify(r.counts));
  const last = measured[measured.length - 1].counts;
  const line = {
    peer: PEER,
    function: fn,
    mode,
    records,
    runs: RUNS,
    median_ms: round(median(times)),
    min_ms: round(Math.min(...times)),
    max_ms: round(Math.max(...times)),
    peak_rss_mb: round(process.resourceUsage().maxRSS / 1024, 1),
    calls: last.calls,
    ops: last.ops,
    ...(fn === 'trigger' ? { entries: last.entries } : {}),
    faults: last.faults,
    ...(mode === 'sdk' ? { unsigned: last.unsigned } : {}),
    ...(per.every((c) => c === per[0]) ? {} : { calls_per_run: measured.map((r) => r.counts.calls) }),
    parse_median_ms: round(median(measured.map((r) => r.parse))),
    node: process.version,
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
};

main().catch((err) => {
  process.stderr.write(`bench.cjs: run failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
