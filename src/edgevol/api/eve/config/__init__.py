"""Protobuf package org.lfedge.eve.config (generated modules live here)."""
