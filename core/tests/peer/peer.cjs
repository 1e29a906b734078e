// aws-lambda-stream's own code, driven by core/tests/peer.rs to prove wire compatibility.
//
//   node peer.cjs decode <kinesis|sqs|dynamodb|eventbridge>  < Lambda event JSON
//     -> {"events": [the events its from* function decodes], "faults": [error messages]}
//   node peer.cjs encode  < {"events": [...], "changes": [...]}
//     -> its test helpers' Lambda events for those events (their big fields compressed by its
//        own compress()), each event as its EventBridge sink would write the detail, and a
//        DynamoDB stream event of the row changes ({timestamp, keys, newImage, oldImage})
//   node peer.cjs encrypt < {"events": [...], "fields": [...], "masterKeyAlias": "alias/..."}
//     -> the events as its encryptEvent step leaves them (aws-kms-ee, AES, with an eem)
//   node peer.cjs decrypt < {"events": [...]}
//     -> the events as its decryptEvent step restores them (eem removed)
//
// Claim-check pointers are redeemed by its from* functions through its S3 connector, and data
// keys made and decrypted by aws-kms-ee's KMS client: both find the emulator through
// AWS_ENDPOINT_URL.
const {
  fromKinesis, fromSqsEvent, fromDynamodb, fromEventBridge,
  toDynamodbRecords, toKinesisRecords, toSqsEventRecords, toEventBridgeRecord, compress,
} = require('aws-lambda-stream');
const { encryptObject, decryptObject } = require('aws-kms-ee');

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
      dynamodb: toDynamodbRecords(input.changes || []),
      kinesis: toKinesisRecords(input.events),
      sqs: toSqsEventRecords(input.events),
      eventbridge: input.events.map(toEventBridgeRecord),
      published: input.events.map(asPublished),
    };
  } else if (command === 'encrypt') {
    // what aws-lambda-stream's encryptEvent does with { eem: { fields } }
    out = await Promise.all(input.events.map((e) => encryptObject(e, {
      masterKeyAlias: input.masterKeyAlias, fields: input.fields, AES: true,
    }).then(({ encrypted, metadata }) => ({ ...encrypted, eem: metadata }))));
  } else if (command === 'decrypt') {
    // what aws-lambda-stream's decryptEvent does
    out = await Promise.all(input.events.map(({ eem, ...rest }) => (eem
      ? decryptObject(rest, { ...eem, AES: true }).then(({ object }) => object)
      : rest)));
  } else {
    throw new Error(`usage: peer.cjs decode <${Object.keys(decoders).join('|')}> | encode | encrypt | decrypt`);
  }
  process.stdout.write(JSON.stringify(out));
};

main().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
