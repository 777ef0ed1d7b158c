// The official @openai/agents-realtime client, unmodified, over its WebSocket transport with its DEFAULT session
// config (semantic_vad, noise_reduction: null, gpt-4o-mini-transcribe), against the URL given as argv[2].
// The key comes from VOICEBRIDGE_TEST_API_KEY (never a literal here). It connects, changes the agent (a
// session.update round trip), sends a text message and waits for its response, then prints one JSON line:
// {"events": [every server event], "steps": [what it did, in order]} and exits 0; any failure exits 1.
import { RealtimeAgent, RealtimeSession } from '@openai/agents-realtime';

const url = process.argv[2];
const apiKey = process.env.VOICEBRIDGE_TEST_API_KEY;
const events = [];
const steps = [];
const waiters = [];

// A bound for a hang only (each step takes a second or two): never what decides a run on a loaded machine.
function waitFor(predicate, label, ms = 60000) {
  const found = events.find(predicate);
  if (found) return Promise.resolve(found);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${label}`)), ms);
    waiters.push({ predicate, resolve: (e) => { clearTimeout(timer); resolve(e); } });
  });
}

const agent = new RealtimeAgent({ name: 'Assistant', instructions: 'You are a helpful assistant.' });
const session = new RealtimeSession(agent, { transport: 'websocket', model: 'gpt-realtime' });
session.transport.on('*', (event) => {
  // Audio deltas are kept without their audio: the report stays small and each event still validates.
  events.push(event.type === 'response.output_audio.delta' ? { ...event, delta: '' } : event);
  for (const w of [...waiters]) {
    if (w.predicate(event)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(event);
    }
  }
});
session.on('error', (e) => steps.push({ step: 'error', detail: String(e?.error?.message ?? e?.error ?? e) }));

try {
  await session.connect({ apiKey, url });
  steps.push({ step: 'connected' });
  // connect() sent the default config as a session.update: the server's answer is the effective session.
  await waitFor((e) => e.type === 'session.updated' && e.session?.instructions === agent.instructions, 'session.updated');
  steps.push({ step: 'initial session.updated' });

  const other = new RealtimeAgent({ name: 'Other', instructions: 'You are another helpful assistant.' });
  await session.updateAgent(other);
  await waitFor((e) => e.type === 'session.updated' && e.session?.instructions === other.instructions, 'the update');
  steps.push({ step: 'agent session.updated' });

  session.sendMessage('Hello there.');
  const done = await waitFor((e) => e.type === 'response.done', 'response.done');
  steps.push({ step: 'response.done', status: done.response?.status });
  session.close();
  report({ events, steps }, 0);
} catch (e) {
  report({ events, steps, failure: String(e?.message ?? e) }, 1);
}

function report(result, code) {
  // Exit only once the line is written: a piped stdout is asynchronous in node.
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}
