// Deterministic Lambda events for the side-by-side benchmark (no dependencies, no clock, no
// randomness: the same arguments always write the same bytes).
//
//   node gen.cjs kinesis  [N=5000] > k.json   a Kinesis event of N records whose data is a
//                                              domain event, JSON, base64 (as Kinesis delivers)
//   node gen.cjs dynamodb [N=5000] > d.json   a DynamoDB stream event of N INSERTs of the events
//                                              table, items {pk, sk, discriminator: "event",
//                                              timestamp, event}, NEW_IMAGE, DynamoDB JSON
//
// Record i is the event of thing i % 500 at version floor(i / 500) + 1: `thing-created` for
// version 1, `thing-updated` after, each carrying the thing's whole state (~1 KB) and its
// `version`, so an event is ~1.1 KB of JSON. Both kinds carry the same events.
'use strict';

const THINGS = 500;
const BASE_TIME = 1700000000000; // ms; record i happens at BASE_TIME + i seconds
const REGION = 'us-east-1';
const ACCOUNT = '123456789012';
const FILLER = 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ';

const pad = (n, width) => String(n).padStart(width, '0');

const thingId = (t) => `thing-${pad(t, 4)}`;

const toEvent = (i) => {
  const t = i % THINGS;
  const version = Math.floor(i / THINGS) + 1;
  const id = thingId(t);
  const timestamp = BASE_TIME + i * 1000;
  return {
    id: `${id}:v${version}`,
    type: version === 1 ? 'thing-created' : 'thing-updated',
    timestamp,
    partitionKey: id,
    tags: {
      account: 'dev',
      region: REGION,
      stage: 'dev',
      source: 'thing-service',
      functionname: 'thing-service-dev-command',
      pipeline: 'thing-commands',
    },
    thing: {
      id,
      name: `widget number ${t} revision ${version}`,
      description: 'a reasonably long description of the thing that keeps going for a while',
      category: ['hardware', 'software', 'services', 'spares'][t % 4],
      price: 1000 + ((t * 37 + version * 11) % 9000),
      currency: 'EUR',
      stock: (t * 13 + version * 7) % 1000,
      active: version % 5 !== 0,
      labels: ['red', 'large', 'sale'],
      dimensions: { width: 10.5, height: 20.25, depth: 3 + (t % 7) },
      supplier: { id: `sup-${pad(t % 50, 3)}`, name: 'Acme Components Ltd', country: 'DE' },
      sku: `SKU-${pad(t, 8)}`,
      createdBy: `user-${pad(t % 97, 4)}`,
      updatedBy: `user-${pad((t + version) % 97, 4)}`,
      updatedAt: new Date(timestamp).toISOString(),
      notes: FILLER.repeat(6).slice(0, 360 + (i % 5) * 10),
    },
    version,
  };
};

// DynamoDB JSON, as a stream record's image carries it
const marshall = (v) => {
  if (v === null || v === undefined) return { NULL: true };
  if (typeof v === 'string') return { S: v };
  if (typeof v === 'number') return { N: String(v) };
  if (typeof v === 'boolean') return { BOOL: v };
  if (Array.isArray(v)) return { L: v.map(marshall) };
  return { M: marshallItem(v) };
};
const marshallItem = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, marshall(v)]));

const kinesis = (n) => ({
  Records: Array.from({ length: n }, (_, i) => {
    const e = toEvent(i);
    const seq = `49590338271490256608559692538361571095921575989136${pad(i, 6)}`;
    return {
      kinesis: {
        kinesisSchemaVersion: '1.0',
        partitionKey: e.partitionKey,
        sequenceNumber: seq,
        data: Buffer.from(JSON.stringify(e)).toString('base64'),
        approximateArrivalTimestamp: (e.timestamp + 250) / 1000,
      },
      eventSource: 'aws:kinesis',
      eventVersion: '1.0',
      eventID: `shardId-000000000000:${seq}`,
      eventName: 'aws:kinesis:record',
      invokeIdentityArn: `arn:aws:iam::${ACCOUNT}:role/listener`,
      awsRegion: REGION,
      eventSourceARN: `arn:aws:kinesis:${REGION}:${ACCOUNT}:stream/domain-events`,
    };
  }),
});

const dynamodb = (n) => ({
  Records: Array.from({ length: n }, (_, i) => {
    const e = toEvent(i);
    const keys = { pk: `thing#${e.partitionKey}`, sk: pad(e.version, 12) };
    const item = { ...keys, discriminator: 'event', timestamp: e.timestamp, event: e };
    const Keys = marshallItem(keys);
    const NewImage = marshallItem(item);
    return {
      eventID: `events-${i}`,
      eventName: 'INSERT',
      eventVersion: '1.1',
      eventSource: 'aws:dynamodb',
      awsRegion: REGION,
      dynamodb: {
        ApproximateCreationDateTime: Math.floor(e.timestamp / 1000),
        Keys,
        NewImage,
        SequenceNumber: `44215845000000000${pad(i, 11)}`,
        SizeBytes: Buffer.byteLength(JSON.stringify(item)),
        StreamViewType: 'NEW_IMAGE',
      },
      eventSourceARN: `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/events/stream/2026-11-22T00:00:00.000`,
    };
  }),
});

const kinds = { kinesis, dynamodb };

const main = () => {
  const [kind, count = '5000'] = process.argv.slice(2);
  const n = Number(count);
  if (!kinds[kind] || !Number.isInteger(n) || n < 1) {
    process.stderr.write('usage: node gen.cjs <kinesis|dynamodb> [records=5000] > event.json\n');
    process.exitCode = 2;
    return;
  }
  process.stdout.write(JSON.stringify(kinds[kind](n)));
  process.stdout.write('\n');
};

if (require.main === module) main();

module.exports = { toEvent, kinesis, dynamodb, THINGS };
