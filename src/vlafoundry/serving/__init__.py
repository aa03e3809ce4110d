"""Serving a trained policy to other processes: a websocket + msgpack policy server and its client
(:mod:`vlafoundry.serving.server`, :mod:`vlafoundry.serving.client`, the wire format in
:mod:`vlafoundry.serving.codec` and :mod:`vlafoundry.serving.protocol`), and ONNX export of the acting path
(:mod:`vlafoundry.serving.onnx_export`). See docs/serving.md.

Same layer as ``vlafoundry.eval`` (they never import each other; the CLI glues them). The optional dependencies
(``websockets``, ``msgpack``; ``onnx``, ``onnxruntime`` for export) come with the ``serve`` / ``onnx`` extras.
"""
