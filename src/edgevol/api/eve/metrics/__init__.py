"""Protobuf package org.lfedge.eve.metrics (generated modules live here)."""
