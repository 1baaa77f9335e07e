// Drives one call through the official provider SDK, as a worker would,
// and prints what the SDK saw as one JSON object on stdout.
//
//   node sdk.mjs '{"sdk":"openai","op":"chat-stream","baseURL":"http://127.0.0.1:1234/v1",
//                  "client":"e2e-stream","params":{...},"headers":{...},"maxRetries":2}'
//
// ops: chat, chat-stream (OpenAI chat completions), embeddings, messages,
// messages-stream (Anthropic). Every attempt the SDK makes goes through a
// recording fetch, so retries are counted on the worker's side too.
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const spec = JSON.parse(process.argv[2]);
const t0 = performance.now();
const ms = () => Math.round((performance.now() - t0) * 10) / 10;

const attempts = [];
const recordingFetch = async (url, init) => {
  const h = new Headers(init?.headers);
  const a = { at: ms(), retryCount: h.get('x-stainless-retry-count'), client: h.get('x-tollgate-client') };
  attempts.push(a);
  const resp = await fetch(url, init);
  a.status = resp.status;
  a.server = resp.headers.get('server');
  return resp;
};

const common = {
  baseURL: spec.baseURL,
  maxRetries: spec.maxRetries ?? 2,
  timeout: spec.timeoutMs ?? 20000,
  fetch: recordingFetch,
  defaultHeaders: { 'x-tollgate-client': spec.client, ...(spec.headers ?? {}) },
};

const out = { ok: false, attempts };
try {
  if (spec.sdk === 'openai') {
    const client = new OpenAI({ apiKey: 'sk-e2e-test', ...common });
    switch (spec.op) {
      case 'chat':
        out.result = await client.chat.completions.create(spec.params);
        out.text = out.result.choices[0].message.content;
        break;
      case 'chat-stream': {
        const stream = await client.chat.completions.create({ ...spec.params, stream: true });
        out.chunks = [];
        out.text = '';
        out.typicalCodeErrors = 0; // chunk.choices[0].delta, as most workers write it
        for await (const chunk of stream) {
          out.chunks.push({ at: ms(), data: chunk });
          try {
            out.text += chunk.choices[0].delta.content ?? '';
          } catch {
            out.typicalCodeErrors++;
          }
        }
        break;
      }
      case 'embeddings':
        out.result = await client.embeddings.create(spec.params);
        break;
      default:
        throw new Error(`unknown op ${spec.op}`);
    }
  } else if (spec.sdk === 'anthropic') {
    const client = new Anthropic({ apiKey: 'sk-ant-e2e-test', ...common });
    switch (spec.op) {
      case 'messages':
        out.result = await client.messages.create(spec.params);
        out.text = out.result.content.map((b) => b.text ?? '').join('');
        break;
      case 'messages-stream': {
        const stream = await client.messages.create({ ...spec.params, stream: true });
        out.chunks = [];
        out.text = '';
        for await (const ev of stream) {
          out.chunks.push({ at: ms(), data: ev });
          if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') out.text += ev.delta.text;
        }
        break;
      }
      default:
        throw new Error(`unknown op ${spec.op}`);
    }
  } else {
    throw new Error(`unknown sdk ${spec.sdk}`);
  }
  out.ok = true;
} catch (err) {
  out.error = {
    class: err?.constructor?.name,
    message: String(err?.message ?? err),
    status: err?.status ?? null,
    requestID: err?.requestID ?? err?.request_id ?? null,
    // OpenAI's body is the inner error object; Anthropic's the whole envelope.
    type: err?.error?.error?.type ?? err?.error?.type ?? null,
    body: err?.error ?? null,
    headers: err?.headers ? Object.fromEntries(err.headers.entries()) : null,
  };
}
out.elapsedMs = ms();
process.stdout.write(JSON.stringify(out) + '\n');
