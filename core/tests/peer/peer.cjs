// aws-lambda-stream's own code, driven by core/tests/peer.rs to prove wire compatibility.
//
//   node peer.cjs decode <kinesis|sqs|dynamodb|eventbridge>  < Lambda event JSON
//     -> {"events": [the events its from* function decodes], "faults": [error messages]}
//   node peer.cjs encode  < {"events": [...]}
//     -> its test helpers' Lambda events for those events (their big fields compressed by its
//        own compress()) and each event as its EventBridge sink would write the detail
//
// Claim-check pointers are redeemed by its from* functions through its S3 connector, which
// finds the emulator through AWS_ENDPOINT_URL.
const {
  fromKinesis, fromSqsEvent, fromDynamodb, fromEventBridge,
  toKinesisRecords, toSqsEventRecords, toEventBridgeRecord, compress,
} = require('aws-lambda-stream');

const read = () => new Promise((resolve, reject) => {
  let text = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => { text += chunk; });
  process.stdin.on('end', () => resolve(JSON.parse(text)));
  process.stdin.on('error', reject);
});

const decoders = {
  kinesis: fromKinesis,
  sqs: fromSqsEvent,
  dynamodb: fromDynamodb,
  eventbridge: fromEventBridge,
};

const decode = (kind, event) => new Promise((resolve) => {
  const events = [];
  const faults = [];
  decoders[kind](event)
    .errors((err) => { faults.push(String(err.message)); })
    .each((uow) => { events.push(uow.event); })
    .done(() => resolve({ events, faults }));
});

// as its EventBridge sink writes an entry's Detail, with its default options
const threshold = Number(process.env.COMPRESSION_THRESHOLD) || 1024 * 10;
const asPublished = (e) => JSON.stringify(e, compress({ compressionThreshold: threshold, compressionIgnore: [] }));

const main = async () => {
  const [command, kind] = process.argv.slice(2);
  const input = await read();
  let out;
  if (command === 'decode' && decoders[kind]) {
    out = await decode(kind, input);
  } else if (command === 'encode') {
    out = {
      kinesis: toKinesisRecords(input.events),
      sqs: toSqsEventRecords(input.events),
      eventbridge: input.events.map(toEventBridgeRecord),
      published: input.events.map(asPublished),
    };
  } else {
    throw new Error(`usage: peer.cjs decode <${Object.keys(decoders).join('|')}> | encode`);
  }
  process.stdout.write(JSON.stringify(out));
};

main().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
