"""ONNX: conversion, runtime, sidecar, export of a trial, evaluation, final fit.

Modules: :mod:`~atml.onnx.convert` (torch model -> verified ONNX bytes, int8),
:mod:`~atml.onnx.runtime` (onnxruntime sessions, latency), :mod:`~atml.onnx.sidecar` (the
JSON sidecar's schema, built and read), :mod:`~atml.onnx.preprocess_graph` (the raw graph:
the trial's preprocessing as ONNX nodes in front of the network; its steps in
:mod:`~atml.onnx.signal_nodes`), :mod:`~atml.onnx.raw_export` (the raw graph's items and
parity check), :mod:`~atml.onnx.export` (a study's trial -> files),
:mod:`~atml.onnx.evaluate` (``atml evaluate``) and :mod:`~atml.onnx.refit` (refit, ensembles).
Import the submodules: runtime, sidecar, signal_nodes, preprocess_graph and evaluate load no
torch; convert imports no :mod:`atml.trial` (the trial sizes its models with it).
"""
