// TensorFlow.js itself (tfjs-core + the CPU backend + tfjs-converter and tfjs-layers, from npm) running a graph
// model or a layers model: the reference bench/tfjs_models.py compares openrknn's load_tfjs against.
//   node tfjs_reference.js JOB.json
// JOB: {"model": "model.json", "outputs": [names], "samples": [{"inputs": {name: [file, shape]}, "out": prefix}]};
// each output is written to <prefix>.<k>.f32 (float32, little-endian) with its shape in <prefix>.json.
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const converter = require("@tensorflow/tfjs-converter");
const layers = require("@tensorflow/tfjs-layers");

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const doc = JSON.parse(fs.readFileSync(job.model, "utf8"));
  const dir = path.dirname(job.model);
  const specs = [];
  const shards = [];
  for (const group of doc.weightsManifest) {
    for (const p of group.paths) shards.push(fs.readFileSync(path.join(dir, p)));
    specs.push(...group.weights);
  }
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  await tf.setBackend("cpu");
  const artifacts = {modelTopology: doc.modelTopology, weightSpecs: specs, weightData, format: doc.format,
                     generatedBy: doc.generatedBy, convertedBy: doc.convertedBy, signature: doc.signature,
                     userDefinedMetadata: doc.userDefinedMetadata};
  // a layers model (a Keras topology) runs through tfjs-layers, its inputs in the model's order
  const isLayers = doc.format === "layers-model" ||
                   (doc.modelTopology && (doc.modelTopology.model_config || doc.modelTopology.class_name));
  const model = isLayers ? await layers.loadLayersModel({load: async () => artifacts})
                         : await converter.loadGraphModel({load: async () => artifacts});
  for (const sample of job.samples) {
    const feeds = {};
    for (const [name, [file, shape]] of Object.entries(sample.inputs)) {
      const buf = fs.readFileSync(file);
      feeds[name] = tf.tensor(new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4), shape, "float32");
    }
    // a Sequential model built lazily names no inputs: its one feed goes in as it is
    const ordered = isLayers && model.inputNames.length ? model.inputNames.map((n) => feeds[n]) : Object.values(feeds);
    let outs = isLayers ? model.predict(ordered)
                        : await model.executeAsync(feeds, job.outputs);
    if (!Array.isArray(outs)) outs = [outs];
    const shapes = [];
    for (let k = 0; k < outs.length; k++) {
      const data = await outs[k].cast("float32").data();
      fs.writeFileSync(`${sample.out}.${k}.f32`, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      shapes.push(outs[k].shape);
    }
    fs.writeFileSync(`${sample.out}.json`, JSON.stringify(shapes));
    tf.dispose([...Object.values(feeds), ...outs]);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
