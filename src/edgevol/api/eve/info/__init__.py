"""Protobuf package org.lfedge.eve.info (generated modules live here)."""
