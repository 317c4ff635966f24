pub mod agent_token;
