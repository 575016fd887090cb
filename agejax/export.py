r"""Write a trained run's model for serving: an agejax bundle, a TF SavedModel, TFLite or ONNX.

  python -m agejax.export --workdir=DIR --output=OUT [--format=bundle|saved_model|tflite|onnx] \
      [--checkpoint=best|latest|STEP] [--quantize=none|dynamic] [--batch=N|dynamic] \
      [--no_verify] [--margin=M] [--stored_size=S] [--overwrite]
  python -m agejax.export --model=BUNDLE --output=OUT --format=saved_model|tflite|onnx ...

``bundle`` (the default) is agejax's own format: ``agejax.inference.load(OUT)``
and ``python -m agejax.predict --model=OUT`` read it with JAX. The other
formats hold the resize, centre crop and normalisation inside the graph and
take uint8 RGB face crops (agejax.serving.formats says how each is made);
``agejax.predict --model=OUT`` reads them too. ``--model`` takes a bundle
instead of a run (``agejax.convert --bundle``: DEX's released nets). Every format writes
``OUT/model.json``. Runtime formats are run once in their runtime against
the JAX model on generated crops (``--verify``, on by default): a float
model more than 1e-4 years off fails the export. Exit codes: 0 written,
2 bad flags, workdir, missing 'export' extra, failed verification or an
existing model without --overwrite.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from agejax import cli

FLAGS = cli.new_flags()
flags.DEFINE_string("workdir", None, "Training run directory.", flag_values=FLAGS)
flags.DEFINE_string("model", None, "An export bundle (agejax.convert --bundle, or a run's "
                    "bundle) to write in a runtime format, instead of --workdir.",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "Directory to write.", flag_values=FLAGS)
flags.DEFINE_enum("format", "bundle", ["bundle", "saved_model", "tflite", "onnx"],
                  "What to write.", flag_values=FLAGS)
flags.DEFINE_string("checkpoint", "best", "best (lowest validation metric), latest, or a step.",
                    flag_values=FLAGS)
flags.DEFINE_enum("quantize", "none", ["none", "dynamic"],
                  "tflite: dynamic = int8 weights (dynamic-range quantisation).",
                  flag_values=FLAGS)
flags.DEFINE_string("batch", "dynamic", "Runtime formats: a fixed batch size, or dynamic.",
                    flag_values=FLAGS)
flags.DEFINE_bool("verify", True, "Runtime formats: check the ages against JAX's.",
                  flag_values=FLAGS)
flags.DEFINE_float("margin", None, "Face box margin per side; default: the dataset's.",
                   flag_values=FLAGS)
flags.DEFINE_integer("stored_size", None, "Side of the stored face crops; default: the "
                     "dataset's.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace a model already in --output.", flag_values=FLAGS)

_HOW_TO_CALL = {
    "saved_model": ("saved_model_cli show --dir {out} --tag_set serve --signature_def "
                    "serving_default\n  python -c \"import tensorflow as tf; "
                    "f = tf.saved_model.load('{out}').signatures['serving_default']; "
                    "print(f(images=crops_uint8)['age'])\"\n  TF Serving: docker run -p 8501:8501 "
                    "-v {out}:/models/age/1 -e MODEL_NAME=age tensorflow/serving"),
    "tflite": ("python -c \"from ai_edge_litert.interpreter import Interpreter; "
               "r = Interpreter('{out}/model.tflite').get_signature_runner(); "
               "print(r(images=crops_uint8)['age'])\""),
    "onnx": ("python -c \"import onnxruntime as ort; s = ort.InferenceSession("
             "'{out}/model.onnx'); print(s.run(['age'], {{'images': crops_uint8}})[0])\""),
}


def _batch() -> int | None:
  if FLAGS.batch == "dynamic":
    return None
  try:
    return int(FLAGS.batch)
  except ValueError:
    from agejax.errors import UsageError  # pylint: disable=import-outside-toplevel
    raise UsageError(f"--batch must be a number or dynamic, got {FLAGS.batch!r}") from None


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  from agejax.serving import exporters  # pylint: disable=import-outside-toplevel
  from agejax.evaluation import intervals  # pylint: disable=import-outside-toplevel

  from agejax.errors import UsageError  # pylint: disable=import-outside-toplevel

  if bool(FLAGS.workdir) == bool(FLAGS.model):
    raise UsageError("give --workdir=RUN or --model=BUNDLE (one of them)")
  source = FLAGS.workdir or FLAGS.model
  if FLAGS.model and not os.path.isfile(os.path.join(FLAGS.model, "model.json")):
    raise UsageError(f"--model={FLAGS.model}: no model.json there (not an export bundle)")
  out = os.path.abspath(FLAGS.output)
  meta = exporters.export(source, out, FLAGS.checkpoint, margin=FLAGS.margin,
                       stored_size=FLAGS.stored_size, overwrite=FLAGS.overwrite,
                       fmt=FLAGS.format, quantize=FLAGS.quantize, batch=_batch(),
                       verify=FLAGS.verify)
  crop = meta["crop"]
  written = meta.get("export", {}).get("file", "bundle")
  print(f"exported {meta['model']['arch']} ({meta['head']} head) from step "
        f"{meta['source']['step']} of {source} to {out} ({FLAGS.format}: {written}"
        f"{', int8 weights' if FLAGS.quantize == 'dynamic' else ''}) and model.json")
  print(f"input: face crops with margin {crop['margin']} stored at {crop['stored_size']} px "
        f"({crop['source']}), centre {meta['image_size']} px, {meta['preprocessing']} "
        f"preprocessing")
  if "export" in meta:
    io = meta["export"]
    print(f"signature {io['signature']}: {io['input']['name']} uint8 {io['input']['shape']} "
          f"-> {', '.join(io['outputs'])}")
  if "verification" in meta:
    v = meta["verification"]
    verdict = (f"within {v['tolerance']}" if v["tolerance"] else "quantised, not asserted")
    print(f"verified on {v['crops']} crops: |age - JAX age| max {v['max_abs_age']:.2g}, "
          f"mean {v['mean_abs_age']:.2g} years ({verdict})")
    held = v.get("heldout")
    if held and "skipped" in held:
      print(f"held-out MAE not measured ({held['split']}: {held['skipped']})")
    elif held:
      print(f"held-out MAE on {held['examples']} {held['split']} crops: {held['mae_exported']:.3f} "
            f"years quantised vs {held['mae_jax']:.3f} float ({held['mae_difference']:+.3f})")
  if FLAGS.workdir:
    note = intervals.fitted_for(FLAGS.workdir, meta["source"]["step"], meta["flip_tta"])[1]
    print(note + (", in model.json" if "interval" in meta else ""))
  if FLAGS.format in _HOW_TO_CALL:
    print("call it:\n  " + _HOW_TO_CALL[FLAGS.format].format(out=out))
  print(f"predict: python -m agejax.predict --model={out} PHOTO.jpg")


def main(argv: list[str] | None = None) -> int:
  from agejax.serving.runtimes import MissingExtra  # pylint: disable=import-outside-toplevel
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.export",
                 required=("output",), user_errors=(ValueError, MissingExtra))


if __name__ == "__main__":
  sys.exit(main())
