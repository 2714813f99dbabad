//! One `tp_btf` hook per file.

mod dead_switch;
mod exit;
mod fork;
mod free;
mod wait;
