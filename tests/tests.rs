//! The integration test binary: one binary, modules by concern. Tests that need Docker use the
//! real engine; without one they print a loud SKIPPED and pass, unless NUWAX_REQUIRE_DOCKER=1.

mod support;

mod archive;
mod backup;
mod cli;
mod console;
mod extract;
mod faults;
mod lifecycle;
mod major;
mod modes;
mod offsite;
mod package;
mod pause;
mod regression;
mod rollback;
mod serve;
mod site;
mod twophase;
mod upgrade;
