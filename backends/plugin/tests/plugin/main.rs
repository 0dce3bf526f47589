//! The plugin backend: the shipped fake plugin through the `Evaluator`
//! traits, the start-up errors, misbehaving plugins, and a plugin in C.

mod c_plugin;
mod fake;
mod misbehaving;
mod startup;
mod support;
