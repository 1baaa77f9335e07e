// A worker that knows nothing of Tollgate. It uses the official OpenAI SDK
// as any application would; OPENAI_BASE_URL (set by docker-compose or the
// Kubernetes Deployment) points it at the pod's Envoy, which asks Tollgate
// before each call. The only Tollgate-specific thing it sends is who it is
// and how urgent the call is (x-tollgate-client, x-tollgate-priority); a
// worker with one identity can leave the client to `serve --client`.
//
// Each call prints one JSON line: what the SDK saw (status, the model that
// answered, Tollgate's headers) after the SDK's own retries of a 429.
import OpenAI from "openai";

const client = new OpenAI(); // OPENAI_API_KEY and OPENAI_BASE_URL from the environment
const clients = (process.env.WORKER_CLIENTS || "default").split(",").filter(Boolean);
const classes = (process.env.WORKER_CLASSES || "immediate,normal,batch").split(",").filter(Boolean);
const pauseMs = Number(process.env.WORKER_PAUSE_MS || 250);
const limit = Number(process.env.WORKER_CALLS || 0); // 0: forever

for (let i = 0; limit === 0 || i < limit; i++) {
  const who = clients[i % clients.length];
  const cls = classes[Math.floor(i / clients.length) % classes.length];
  const started = Date.now();
  const line = { client: who, class: cls };
  try {
    const { data, response } = await client.chat.completions
      .create(
        {
          model: "gpt-4o",
          max_tokens: 200,
          messages: [{ role: "user", content: "Summarise the quarterly report in three bullet points." }],
        },
        { headers: { "x-tollgate-client": who, "x-tollgate-priority": cls } },
      )
      .withResponse();
    Object.assign(line, {
      status: response.status,
      model: data.model,
      optimized: response.headers.get("x-tollgate-optimized"),
      queue_wait: response.headers.get("x-tollgate-queue-wait"),
      tokens: data.usage?.total_tokens,
    });
  } catch (err) {
    Object.assign(line, {
      status: err.status ?? null,
      reason: err.headers?.get?.("x-tollgate-reason") ?? null,
      error: err.message,
    });
  }
  line.ms = Date.now() - started;
  console.log(JSON.stringify(line));
  await new Promise((resolve) => setTimeout(resolve, pauseMs));
}
