"""Protobuf package org.lfedge.eve.common (generated modules live here)."""
