"""ONNX: conversion, runtime, sidecar, export of a trial, evaluation, final fit.

Import the submodules: :mod:`atml.onnx.evaluate` loads no torch.
"""
