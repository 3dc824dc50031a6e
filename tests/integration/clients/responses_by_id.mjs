// The openai-node SDK's by-id stream helper on one response: what it shows after
// `starting_after`, and the response it assembles. Prints one JSON line.
//   node responses_by_id.mjs BASE_URL RESPONSE_ID STARTING_AFTER
import OpenAI from "openai";

const [baseURL, responseId, after] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const stream = client.responses.stream({ response_id: responseId, starting_after: Number(after) });
const shown = [];
stream.on("event", (event) => shown.push(event.sequence_number));
let deltas = "";
stream.on("response.output_text.delta", (event) => { deltas += event.delta; });
const final = await stream.finalResponse();
console.log(JSON.stringify({
  shown,
  deltas,
  text: final.output_text,
  output: final.output.map((item) => ({
    type: item.type, arguments: item.arguments ?? null, name: item.name ?? null,
    text: item.type === "message" ? item.content.map((part) => part.text ?? "").join("") : null,
  })),
}));
