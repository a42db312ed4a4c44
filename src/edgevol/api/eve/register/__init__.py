"""Protobuf package org.lfedge.eve.register (generated modules live here)."""
